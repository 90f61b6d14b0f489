"""The teacher stage: fine-tune a BERT-family model, decompose its knowledge with per-layer probes, and
write what the later stages read instead of running the teacher again.

- ``finetuning``: ``finetune(FinetuneConfig)``, an ordinary ``save_pretrained`` folder of the best epoch;
- ``probes``: ``probe(ProbeConfig)``, one pass of the teacher, per-layer probes, the knowledge store;
- ``augment``: teacher-labelled augmented rows, streamed into the store's work folder;
- ``static_embeddings``: the student's first token table, distilled from the teacher;
- ``store``: the knowledge store on disk, written once (``write_store``) and read (``KnowledgeStore``).

Nothing here is imported by ``import adabert``; each module imports torch itself.
"""
