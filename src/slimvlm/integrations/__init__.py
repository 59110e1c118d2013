"""Bridges from slimvlm to other tools. Nothing here is imported by ``import slimvlm``, and this package imports
nothing heavy: each bridge lives in its own module and imports its tool itself.

- :mod:`slimvlm.integrations.lmms_eval`: a ``slimvlm`` model for the stock lmms-eval (registered through the
  ``lmms_eval.models`` entry point, see :func:`lmms_eval_manifest`);
- :mod:`slimvlm.integrations.demo_task`: the offline lmms-eval tasks on the demo VLM's test scenes
  (task YAMLs in ``lmms_eval_tasks/``; ``python -m slimvlm.integrations.lmms_eval_tasks`` prints the folder
  to pass as ``--include_path``);
- :mod:`slimvlm.integrations.vllm`: slimvlm's reducers in front of vLLM (``Engine``, ``slimvlm serve``, and the
  ``vllm.general_plugins`` entry point; needs ``slimvlm[serve]``).
"""

__all__ = ["lmms_eval_manifest"]


def lmms_eval_manifest():
    """The ``ModelManifest`` lmms-eval reads from our ``lmms_eval.models`` entry point: ``--model slimvlm``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="slimvlm", simple_class_path="slimvlm.integrations.lmms_eval.SlimVLMEval")
