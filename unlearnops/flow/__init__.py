"""The deletion flow, one module per step.

A batch goes through the steps in :data:`~unlearnops.flow.batch.STEPS` order; each step is a plain function
``step(ws, batch) -> batch`` in the module named by its key, and the Prefect task that runs it
(``pipelines/deletion.py``) carries the same name:

=================  =======================================================================================
``locate``         :mod:`unlearnops.flow.locate` — pending requests → the samples they touch; opens a batch
``dataset_version`` :mod:`unlearnops.flow.dataset_version` — a DVC dataset version without those samples
``unlearn``        :mod:`unlearnops.flow.unlearn` — the method ladder; each rung is judged by ``gates``
``gates``          :mod:`unlearnops.flow.gates` — data, forgetting and utility gates on one rung's model
``export``         :mod:`unlearnops.flow.export` — ONNX and the other configured exporters
``register``       :mod:`unlearnops.flow.register` — signed certificate, MLflow model version, aliases
``finalize``       :mod:`unlearnops.flow.finalize` — requests settled, forgotten samples' copy deleted
=================  =======================================================================================

:mod:`unlearnops.flow.batch` holds the batch record every step reads and writes, :mod:`unlearnops.flow.samples`
the sample sets the steps read, and :mod:`unlearnops.flow.run` the one run loop that both the Prefect flow
and the in-process path drive.
"""
