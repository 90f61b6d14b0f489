"""Evaluation and the run's report: what a trained model is worth, and the pages that show a run.

- ``evaluate``: ``run_evaluation(EvalConfig)``, metrics, loyalty to the teacher, size, FLOPs, latency;
- ``document``: ``build_report(run_dir)``, the run's ``report.md`` and ``report.html`` with their figures;
- ``draw``: ``draw_genotype(genotype, path)``, a searched cell as a picture.

Nothing here is imported by ``import adabert``; each module imports its heavy libraries itself.
"""
