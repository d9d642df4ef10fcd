"""``tune`` stage: run one Optuna study declared in params.yaml (``tune.studies``).

    python -m pipeline.stages.tune --study lt_meta_iada

Resumes the named study in its storage up to its trial budget and writes its analysis to
``studies/<study>/`` (see :mod:`pipeline.tuning.study`).
"""

from __future__ import annotations

from pipeline.tuning.study import main

if __name__ == "__main__":
    raise SystemExit(main())
