"""lmms-eval task YAMLs shipped with slimvlm. ``python -m slimvlm.integrations.lmms_eval_tasks`` prints this
folder, the value for lmms-eval's ``--include_path``."""

import os

#: the folder lmms-eval's ``--include_path`` takes to find the ``slimvlm_demo*`` tasks.
TASKS_DIR = os.path.dirname(os.path.abspath(__file__))
