"""Benchmark tasks from public datasets: the ELEVATER tasks and CoOp's datasets.

`catalog` contains each task's class names, prompt templates and metric. The
readers turn one on-disk layout into a `mvlpt.tasks.Task`: `wds` for
clip-benchmark webdataset shards, `vision_datasets` for ELEVATER's manifests,
`coop` for CoOp's split files and `hateful_memes` for the Hateful Memes
download. `prepare` fetches or points to the data under the data root, checks
it, and loads prepared tasks by name for `mvlpt.builtin.resolve_task`.
"""

from mvlpt.datasets.catalog import TaskSpec, all_specs, is_catalog_name, lookup

__all__ = ["TaskSpec", "all_specs", "is_catalog_name", "lookup"]
