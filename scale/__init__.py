"""Scale out: inpaint a whole dataset of photo/mask pairs on a Ray cluster (the ``ray`` extra).

    from moebius_edge.scale import inpaint_dataset
    run = inpaint_dataset("jobs.parquet", "models", out_dir="out", precision="fp32")
    print("\\n".join(run.summary()))

The command is ``moebius-edge run-dataset``; docs/scale.md describes the jobs table, the results
file and how to size a cluster. Modules: ``schema`` (every column and status name; no Ray),
``jobs`` (reading and planning a jobs table), ``results`` (the results file), ``dataset`` (the Ray
Data actors and ``inpaint_dataset``). The base install never imports this package.
"""
__all__ = ["inpaint_dataset", "DatasetRun", "InpaintActor"]


def __getattr__(name):
    # Lazy, so that ``moebius_edge.scale.schema`` is importable without Ray.
    if name in __all__:
        from moebius_edge.scale import dataset

        return getattr(dataset, name)
    raise AttributeError(name)
