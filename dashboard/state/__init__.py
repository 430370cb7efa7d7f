"""Caching and session wrappers around ``core.study``, the pipeline every page shows.

Split by concern; pages use them as ``from dashboard import state`` → ``state.X``:

- :mod:`.keys`: the frozen dataclass keys every cache is addressed by (``Experiment``,
  ``DataKey``, ``ModelKey``, ``PruneKey``, ``ImageRef``), widget keys, fixed settings;
- :mod:`.widgets`: ``st.session_state`` and the URL (the one flag in ``dashboard/session.py``
  aside, read before this package is imported);
- :mod:`.catalogue`: models, datasets and criteria the selectboxes offer;
- :mod:`.data`: datasets, base models, uploads, ``setup(experiment)``;
- :mod:`.uploads`: each browser session's uploaded files, deleted when it ends or sits unused;
- :mod:`.folders`: the server folders a user may pick (inside the data roots), folder scans
  with progress and cancel;
- :mod:`.exports`: downloads of a pruned model or a run in PruneLens, Hugging Face and ONNX;
- :mod:`.pruning`: the caches of scores, masks or shrunk model and evaluation counts of
  validation slices, assembled into a page's point by ``study.point_report`` (``point``: the
  numbers of ``study.prune_point``), and the warm-up;
- :mod:`.attention`: cached attention maps assembled by ``study.attention_grid`` (the numbers
  of ``study.attention_page``), per-head maps, explanations (``study.explain_point``);
- :mod:`.job`: the one background mechanism (``Job``: start, progress, cancel, result or
  error, per-session and server registries, the session watchdog, stop at exit); every
  thread below is a job;
- :mod:`.jobs`: fine-tuning and AMAP as jobs, the run store;
- :mod:`.owners`: who owns a run (the session or a typed name) and who may see it
  (``PRUNELENS_RUNS_VISIBILITY``);
- :mod:`.compare`: the Compare page's sweep job (imported by that page only);
- :mod:`.prune_work`: the Prune page's job (scores, masks, progressive evaluation);
  :mod:`.prefetch`: its neighbouring slider stops, computed in the server's idle time;
- :mod:`.ui`: the error guard, notices, labels and image cells;
- :mod:`.cache`: the byte-bounded cache of the big results (``PRUNELENS_CACHE_MB``).

Data flows one way (STYLE.md): dataset → base model → scores → masks or shrunk model →
attention, metrics; every number a page shows is that of one ``core.study`` call a notebook
can make (``prune_page``, ``prune_point``, ``attention_page``, ``explain_pair``); this package
only caches its pieces, keeps the session and runs the jobs. Only what a page (or
``app.py``) reads is exported here; tests reach the rest through the submodules.
Cached objects are shared by every browser session, so nothing here mutates one: pruning,
training, gradient maps and hooked forwards work on copies.
"""
from core import boot
from core.study import AttentionView, METHODS, val_subset_label

boot.configure()
boot.apply_torch_threads()

from core.pruning import pattern_sparsity  # noqa: E402  (the Pattern box's fixed sparsity)
from .keys import (CALIBRATION_POOL, CELL_PX, EXPECTED_ERRORS, Experiment,  # noqa: E402
                   IMAGE_SUFFIXES, K_CALIB, K_DATASET, K_FOLDER, K_HUB_ID, K_MODEL, K_MODEL_FOLDER,
                   K_PATTERN, K_PRUNERS, K_SCOPE, K_SEED, K_SOURCE, K_SPARSITY, K_VAL,
                   MAX_IMAGE_MB, MAX_MODEL_MB, PATTERNS, PruneKey, RATIOS, SCORE_MB, Setup,
                   SOURCES, SPARSITY_OPTIONS)
from .widgets import (bound_widget, changed_since_last_run, current_run_id,  # noqa: E402
                      experiment, follow_run, pending_delete, seed_experiment_widgets, set_flag,
                      set_pending_delete, snap_sparsity, source_chosen, take_flag, upload_name,
                      weight_sources, widget_default, widget_follow)
from .catalogue import (dataset_names, model_names, pruner_info, pruner_names,  # noqa: E402
                        training_pruner_names)
from .data import (accept_model_upload, image_tensor, setup, setup_or_stop,  # noqa: E402
                   training_set)
from .pruning import (layer_kept, mask_layers, mask_matrix, point, saliency_table,  # noqa: E402
                      score_distribution, warm_up)
from .attention import (attention_grid, explanations, head_maps, num_blocks,  # noqa: E402
                        num_heads, PRUNE_PAGE_SHOWN, top5, warm_up_grid)
from core.data.photos import DEFAULT_PHOTO, photo_names  # noqa: E402
from .job import describe as describe_work, follow  # noqa: E402
from .prune_work import start as start_prune_work  # noqa: E402
from .prefetch import request as prefetch_neighbours  # noqa: E402
from .folders import dataset_folders, label as folder_label, model_folders  # noqa: E402
from .exports import pruned_downloads, run_downloads  # noqa: E402
from .merging import max_r, merge_curve, merge_view, overlay_cells  # noqa: E402
from .jobs import (cancel_job, get_job, owner_sidebar, run_store, running_jobs,  # noqa: E402
                   start_amap, start_training)
from .owners import (current_owner, OTHER, OWN, run_access, SHARED,  # noqa: E402
                     visible_runs)
from .ui import (chosen_image, colour_bar, default_grid_criteria, follow_work,  # noqa: E402
                 heat_cell, image_cell, image_picker, model_note, no_class_token_note, page_errors,
                 pruner_label, scale_note, sidebar_summary, untrained_notice)
from .ui import default_image_source, image_name, IMAGE_SOURCES, top5_text  # noqa: E402

__all__ = [
    "accept_model_upload", "attention_grid", "AttentionView", "bound_widget", "CALIBRATION_POOL",
    "cancel_job", "CELL_PX", "changed_since_last_run", "chosen_image", "colour_bar",
    "current_owner", "current_run_id", "dataset_folders", "dataset_names",
    "default_grid_criteria", "default_image_source", "DEFAULT_PHOTO", "describe_work",
    "EXPECTED_ERRORS", "Experiment", "experiment", "explanations", "folder_label", "follow",
    "follow_run", "follow_work", "get_job", "head_maps", "heat_cell", "image_cell", "image_name",
    "image_picker", "IMAGE_SOURCES", "IMAGE_SUFFIXES", "image_tensor", "K_CALIB", "K_DATASET",
    "K_FOLDER", "K_HUB_ID", "K_MODEL", "K_MODEL_FOLDER", "K_PATTERN", "K_PRUNERS", "K_SCOPE",
    "K_SEED", "K_SOURCE", "K_SPARSITY", "K_VAL", "layer_kept", "mask_layers", "mask_matrix",
    "MAX_IMAGE_MB", "MAX_MODEL_MB", "max_r", "merge_curve", "merge_view", "METHODS",
    "model_folders", "model_names", "model_note", "no_class_token_note", "num_blocks",
    "num_heads", "OTHER", "overlay_cells", "OWN", "owner_sidebar", "page_errors",
    "pattern_sparsity", "PATTERNS", "pending_delete", "photo_names", "point",
    "prefetch_neighbours", "PRUNE_PAGE_SHOWN", "pruned_downloads", "PruneKey", "pruner_info",
    "pruner_label", "pruner_names", "RATIOS", "run_access", "run_downloads", "run_store",
    "running_jobs", "saliency_table", "scale_note", "score_distribution", "SCORE_MB",
    "seed_experiment_widgets", "set_flag", "set_pending_delete", "Setup", "setup",
    "setup_or_stop", "SHARED", "sidebar_summary", "snap_sparsity", "source_chosen", "SOURCES",
    "SPARSITY_OPTIONS", "start_amap", "start_prune_work", "start_training", "take_flag", "top5",
    "top5_text", "training_pruner_names", "training_set", "untrained_notice", "upload_name",
    "val_subset_label", "visible_runs", "warm_up", "warm_up_grid", "weight_sources",
    "widget_default", "widget_follow"]
