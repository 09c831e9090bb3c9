"""`convnet show -f RUN`: PNG plots of a run (cost curves, filters, predictions, confusion matrix)."""
from __future__ import annotations

import os

import click

from convnet_cli.errors import ConfigError

# --only-errors looks for misclassified cases among this many times --max-cases test cases.
ERROR_SEARCH_FACTOR = 10


@click.command("show")
@click.option("-f", "run_path", required=True, type=click.Path(),
              help="Run directory, or a checkpoint file in it.")
@click.option("--cost", is_flag=True, help="Training and test cost and error rate against epochs.")
@click.option("--filters", "filters_layer", metavar="LAYER", help="Filters of a conv/local/fc layer as a grid.")
@click.option("--preds", "preds_layer", metavar="LAYER",
              help="Test cases with the top-k classes of LAYER (the softmax layer, e.g. probs).")
@click.option("--only-errors", is_flag=True, help="With --preds: only misclassified cases.")
@click.option("--confusion", is_flag=True, help="Confusion matrix on the test batches (a multi-label run: per-class "
                                                "precision-recall curves and class co-occurrence instead).")
@click.option("--out-dir", type=click.Path(file_okay=False), help="Where to write the PNGs.  [default: the run directory]")
@click.option("--data-path", type=click.Path(), help="Batch folder for --preds/--confusion.  [default: the run's]")
@click.option("--topk", type=click.IntRange(min=1), default=3, show_default=True, help="Classes per case for --preds.")
@click.option("--max-cases", type=click.IntRange(min=1), default=32, show_default=True, help="Cases for --preds.")
def command(run_path, cost, filters_layer, preds_layer, only_errors, confusion, out_dir, data_path, topk, max_cases):
    """Write PNG plots of a training run and print their paths.

    \b
    convnet show -f RUNS/ConvNet__... --cost --filters conv1 --preds probs --confusion
    """
    if not (cost or filters_layer or preds_layer or confusion):
        raise ConfigError("nothing to show; give --cost, --filters LAYER, --preds LAYER and/or --confusion")
    if only_errors and not preds_layer:
        raise ConfigError("--only-errors goes with --preds LAYER")
    from convnet_cli.show import plots
    from convnet_cli.show.run import RunPaths, cost_records, filter_weights, predictions, run_best_by, safe_name

    plots.require_matplotlib()
    run = RunPaths(run_path)
    out_dir = out_dir or run.run_dir
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"{out_dir}: is a file; --out-dir must be a folder")
    os.makedirs(out_dir, exist_ok=True)
    name = os.path.basename(os.path.abspath(run.run_dir))

    def written(path):  # print each path as soon as its file is there
        click.echo(path)

    if cost:
        written(plots.plot_cost(cost_records(run), os.path.join(out_dir, "cost.png"),
                                title=f"{name}: cost and error rate", best_by=run_best_by(run)))
    if filters_layer:
        weights, what = filter_weights(run.checkpoint(), filters_layer)
        written(plots.plot_filters(weights, os.path.join(out_dir, f"filters-{safe_name(filters_layer)}.png"),
                                   title=what))
    if preds_layer:
        look = max_cases * ERROR_SEARCH_FACTOR if only_errors else max_cases
        preds = predictions(run, preds_layer, data_path, look, keep_inputs=look)
        k = len(preds.label_names)
        if preds.probs.ndim != 2 or preds.probs.shape[1] != k:
            raise ConfigError(f"layer '{preds_layer}' gives {preds.probs.shape[1]} outputs per case but there are {k} "
                              f"classes; --preds takes the softmax layer that feeds the cost")
        if preds.inputs is None or len(preds.inputs) == 0:
            raise ConfigError("no test cases to show; check --data-path and the run's test range")
        if only_errors and preds.multi_label:
            raise ConfigError("--only-errors: a multi-label run's cases hold sets of classes, not one class to get "
                              "wrong; leave --only-errors out (predict --report gives per-class precision and recall)")
        if only_errors and not (preds.labels >= 0).any():
            raise ConfigError("--only-errors needs true labels, and the test batches have none")
        n = len(preds.inputs)
        suffix = "-errors" if only_errors else ""
        try:
            written(plots.plot_preds(
                preds.inputs, preds.probs[:n], preds.labels[:n], preds.label_names,
                os.path.join(out_dir, f"preds-{safe_name(preds_layer)}{suffix}.png"), topk=topk,
                only_errors=only_errors, filenames=preds.filenames[:n], max_cases=max_cases,
                title=f"{name}: {preds_layer}"))
        except ValueError as exc:
            if only_errors:
                raise ConfigError(f"no misclassified case among the first {n} test cases; nothing to plot") from None
            raise ConfigError(str(exc)) from None
    if confusion:
        from convnet_cli.metrics import confusion_matrix

        full = predictions(run, preds_layer, data_path, None)
        if full.multi_label:
            _multilabel_confusion(full, plots, out_dir, name, written)
            return
        known = full.labels >= 0
        if not known.any():
            raise ConfigError("--confusion needs true labels, and the test batches have none")
        k = len(full.label_names)
        if full.probs.shape[1] != k:
            raise ConfigError(f"layer '{preds_layer}' gives {full.probs.shape[1]} outputs per case but there are {k} "
                              f"classes; name the softmax layer with --preds")
        conf = confusion_matrix(full.labels[known], full.probs[known].argmax(axis=1), k)
        written(plots.plot_confusion(conf, full.label_names, os.path.join(out_dir, "confusion.png"),
                                     title=f"{name}: confusion matrix"))


def _multilabel_confusion(preds, plots, out_dir, name, written):
    """--confusion for a multi-label run: a case holds a set of classes, so no confusion matrix; each class's
    precision-recall curve and the classes' co-occurrence (true and predicted at 0.5) instead."""
    from convnet_cli.show.run import multilabel_figures

    if not preds.labels_known:
        raise ConfigError("--confusion needs the true classes, and the test batches have none")
    click.echo("note: a multi-label run has no confusion matrix (each case holds a set of classes); writing "
               "per-class precision-recall curves and class co-occurrence instead", err=True)
    curves, true_co, pred_co = multilabel_figures(preds)
    written(plots.plot_pr_curves(curves, os.path.join(out_dir, "pr-curves.png"),
                                 title=f"{name}: precision-recall per class"))
    written(plots.plot_cooccurrence(true_co, pred_co, preds.label_names, os.path.join(out_dir, "cooccurrence.png"),
                                    title=f"{name}: class co-occurrence (predicted at 0.5)"))
