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
- :mod:`.pruning`: scores → masks or shrunk model → evaluation, cost, tables, and the warm-up;
- :mod:`.attention`: attention maps, the Fig. 3 grid, per-head maps, explanations;
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
attention, metrics; every number comes from a ``core.study`` function a notebook can call.
Cached objects are shared by every browser session, so nothing here mutates one: pruning,
training, gradient maps and hooked forwards work on copies.
"""
from core import boot
from core.study import METHODS, AttentionView, attention_row, val_subset_label

boot.configure()  # the server did it already; AppTest and scripts may not have
boot.apply_torch_threads()

from core.pruning import pattern_sparsity  # noqa: E402  (the Pattern box's fixed sparsity)
from .keys import (CALIBRATION_POOL, CELL_PX, EXPECTED_ERRORS, IMAGE_SUFFIXES,  # noqa: E402
                   K_CALIB, K_DATASET, K_FOLDER, K_HUB_ID, K_MODEL, K_MODEL_FOLDER, K_PATTERN,
                   K_PRUNERS, K_SCOPE, K_SEED, K_SOURCE, K_SPARSITY, K_VAL, MAX_IMAGE_MB,
                   MAX_MODEL_MB, PATTERNS, RATIOS,
                   SCORE_MB, SOURCES, SPARSITY_OPTIONS, DataKey, Experiment, ImageRef,
                   LoadedModel, ModelKey, PruneKey, Setup)
from .widgets import (bound_widget, changed_since_last_run, set_flag, take_flag,  # noqa: E402
                      current_run_id, experiment, follow_run, pending_delete,  # noqa: E402
                      seed_experiment_widgets, set_pending_delete, snap_sparsity, upload_name,
                      use_trained_checkpoint, widget_default, widget_follow,
                      source_chosen, weight_sources)
from .catalogue import (dataset_names, has_checkpoint, model_names, pruner_info,  # noqa: E402
                        pruner_names, training_pruner_names)
from .data import (accept_image_upload, accept_model_upload, base_model,  # noqa: E402
                   calibration, dataset, dense_cost, image_tensor, setup, setup_or_stop,
                   training_set, val_subset)
from .pruning import (collapsed_layers, cost, evaluation, forward_only, layer_kept,  # noqa: E402
                      mask_layers, mask_matrix, nm_summary, pruned, pruned_model,
                      saliency_table, scores, score_distribution, warm_up)
from .attention import (Grid, attention_grid, attention_maps, explanations,  # noqa: E402
                        head_maps, num_blocks, num_heads, top5, warm_up_grid, PRUNE_PAGE_SHOWN)
from core.data.photos import DEFAULT_PHOTO, photo_names  # noqa: E402
from .job import describe as describe_work, follow  # noqa: E402
from .prune_work import SLOT as PRUNE_SLOT, prune_and_evaluate  # noqa: E402
from .prune_work import start as start_prune_work  # noqa: E402
from .prefetch import request as prefetch_neighbours  # noqa: E402
from .prune_work import basis as prune_basis, signature as prune_signature  # noqa: E402
from .folders import (dataset_folders, label as folder_label, model_folders,  # noqa: E402
                      model_sources)
from .exports import pruned_downloads, run_downloads  # noqa: E402
from .merging import max_r, merge_curve, merge_view, overlay_cells  # noqa: E402
from .jobs import (Job, cancel_job, get_job, run_store, running_jobs, start_amap,  # noqa: E402
                   start_training)
from .owners import (OTHER, OWN, SHARED, current_owner, owner_sidebar,  # noqa: E402
                     run_access, visibility, visible_runs)
from .ui import (chosen_image, colour_bar, default_grid_criteria, follow_work,  # noqa: E402
                 heat_cell, image_cell, image_picker, model_note, no_class_token_note, overlay_cell, page_errors,
                 pruner_label, scale_note, sidebar_summary, untrained_notice)
from .ui import IMAGE_SOURCES, default_image_source, image_name, top5_text  # noqa: E402

__all__ = [
    "chosen_image", "DEFAULT_PHOTO", "IMAGE_SOURCES", "default_image_source", "image_name",
    "photo_names", "top5", "top5_text",
    "PRUNE_SLOT", "SCORE_MB", "bound_widget", "changed_since_last_run", "set_flag",
    "take_flag", "follow_work", "colour_bar", "scale_note", "SPARSITY_OPTIONS", "describe_work", "follow", "prune_and_evaluate",
    "prefetch_neighbours", "prune_basis", "prune_signature", "snap_sparsity", "start_prune_work",
    "AttentionView", "CALIBRATION_POOL", "CELL_PX", "DataKey", "EXPECTED_ERRORS", "Experiment",
    "Grid", "IMAGE_SUFFIXES", "ImageRef", "Job", "K_CALIB", "K_DATASET", "K_FOLDER", "K_MODEL",
    "K_HUB_ID", "K_MODEL_FOLDER", "K_PATTERN", "K_PRUNERS", "K_SCOPE", "K_SEED", "K_SOURCE",
    "K_SPARSITY", "K_VAL",
    "LoadedModel", "MAX_IMAGE_MB", "MAX_MODEL_MB", "METHODS", "ModelKey", "PruneKey", "RATIOS",
    "SOURCES", "Setup", "accept_image_upload", "accept_model_upload", "attention_grid",
    "attention_maps", "attention_row", "base_model", "calibration", "cancel_job",
    "collapsed_layers", "cost", "current_run_id", "dataset", "dataset_folders", "dataset_names",
    "default_grid_criteria", "dense_cost", "evaluation", "experiment", "explanations",
    "folder_label", "follow_run", "forward_only", "get_job", "has_checkpoint", "head_maps",
    "heat_cell", "image_cell", "image_tensor", "layer_kept", "mask_layers", "mask_matrix",
    "model_folders", "model_names", "model_sources", "model_note", "nm_summary", "PATTERNS",
    "pattern_sparsity", "no_class_token_note", "num_blocks",
    "num_heads", "overlay_cell", "page_errors", "pending_delete", "pruned", "pruned_downloads",
    "pruned_model", "pruner_info", "pruner_label", "pruner_names", "run_downloads", "run_store",
    "running_jobs", "saliency_table", "score_distribution", "scores", "seed_experiment_widgets",
    "set_pending_delete", "setup", "setup_or_stop", "sidebar_summary",
    "start_amap", "start_training", "training_pruner_names", "training_set", "untrained_notice",
    "upload_name", "use_trained_checkpoint", "val_subset", "val_subset_label", "warm_up",
    "warm_up_grid", "widget_default", "widget_follow", "source_chosen", "weight_sources",
    "merge_curve", "merge_view", "overlay_cells", "max_r", "image_picker",
    "PRUNE_PAGE_SHOWN", "OTHER", "OWN", "SHARED", "current_owner",
    "owner_sidebar", "run_access", "visibility", "visible_runs"]
