"""The student stage: the searched architecture as a transformers model, trained from the knowledge store.

- ``network``: ``AdaBertStudentForSequenceClassification`` and ``build_student(genotype, ...)``; importing
  it registers the model with transformers' Auto classes (see :func:`adabert.register_auto_classes`);
- ``train``: ``train_student(TrainConfig)``, KD from the store, resumable, into a ``save_pretrained`` folder.

Nothing here is imported by ``import adabert``; each module imports torch itself.
"""
