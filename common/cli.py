"""The ``medsilo`` command line. Flower's own commands still run the federations.

Each command imports what it needs when it runs (torch, TenSEAL, the report), so
``medsilo --help`` answers at once and ``medsilo keys init`` does not load torch.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from common.cli_errors import one_line_errors
from common.cli_outcome import outcome
from common.cli_pretrain import pretrain
from common.presets import PRESETS
from common.run_files import write_json, write_predictions_csv

__all__ = ["app"]

app = typer.Typer(help="medsilo: federated medical image classification on Flower.", no_args_is_help=True)
data_app = typer.Typer(help="Create and check data roots.", no_args_is_help=True)
keys_app = typer.Typer(help="CKKS keys for encrypted FedAvg.", no_args_is_help=True)
model_app = typer.Typer(help="Model directories.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(keys_app, name="keys")
app.add_typer(model_app, name="model")
node_app = typer.Typer(help="A deployed SuperNode's node config.", no_args_is_help=True)
app.add_typer(node_app, name="node")
app.command("outcome")(outcome)
app.command("pretrain")(pretrain)
console = Console(soft_wrap=True)


@data_app.command("synth")
def data_synth(
    modality: Annotated[str, typer.Option(help=f"dataset preset: {', '.join(PRESETS)}")],
    out: Annotated[Path, typer.Option(help="folder to write ROOT/{train,test}/<class>/ into")],
    train_per_class: Annotated[int, typer.Option(min=1)] = 40,
    test_per_class: Annotated[int, typer.Option(min=0)] = 10,
    size: Annotated[int, typer.Option(min=32, max=1024)] = 64,
    seed: Annotated[int, typer.Option(min=0)] = 0,
) -> None:
    """Write a synthetic ImageFolder tree whose classes a CNN can learn."""
    from common.data.synth import write_synthetic_tree

    with one_line_errors():
        root = write_synthetic_tree(
            out, modality=modality, train_per_class=train_per_class, test_per_class=test_per_class, size=size, seed=seed
        )
    console.print(f"wrote synthetic {modality} data to {root}")


@data_app.command("check")
def data_check(
    root: Annotated[Path, typer.Argument(help="data root: ROOT/<split>/<class>/<images>")],
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the full report as JSON")] = None,
    near: Annotated[bool, typer.Option(help="also find near-twins: flipped, rotated by 90°, resized copies")] = True,
    near_tolerance: Annotated[int, typer.Option(help="bits (of 64) two perceptual hashes may differ by")] = 4,
    write_clean_split: Annotated[
        Path | None, typer.Option(help="write ROOT again to this folder with no near-twin group across splits")
    ] = None,
) -> None:
    """Report class counts per split, unreadable files, exact duplicates and near-twins."""
    from common.data.check import check_data_root
    from common.data.near_duplicates import write_clean_split as write_split

    with one_line_errors():
        if write_clean_split is not None and not near:
            raise ValueError("--write-clean-split needs the near-twin audit; drop --no-near")
        result = check_data_root(root, near=near, tolerance=near_tolerance)
    classes = sorted({c for counts in result["splits"].values() for c in counts})
    table = Table(title=f"class counts in {root}")
    table.add_column("split")
    for name in classes:
        table.add_column(name, justify="right")
    for split, counts in result["splits"].items():
        table.add_row(split, *(str(counts.get(c, 0)) for c in classes))
    console.print(table)
    console.print(f"unreadable files: {len(result['unreadable'])}")
    for item in result["unreadable"][:20]:
        console.print(f"  {item['path']}: {item['reason']}", highlight=False)
    for split, groups in result["duplicates_within"].items():
        extra = sum(len(g) - 1 for g in groups)
        console.print(f"duplicates within {split}: {len(groups)} group(s), {extra} redundant file(s)")
    console.print(f"duplicates across splits: {len(result['duplicates_across'])} group(s)")
    for group in result["duplicates_across"][:10]:
        console.print("  " + " == ".join(group), highlight=False)
    twins = result.get("near_twins")
    if twins is not None:
        within = ", ".join(f"{n} within {split}" for split, n in twins["groups_within"].items()) or "none within"
        console.print(
            f"near-twins (flips, 90° rotations, resizes; <= {twins['tolerance_bits']} of 64 bits): {within}; "
            f"{len(twins['across'])} group(s) across splits",
            highlight=False,
        )
        for group in twins["across"][:10]:
            console.print("  " + " ~ ".join(group), highlight=False)
    if write_clean_split is not None:
        with one_line_errors():
            write_split(Path(root), twins["images"], twins["clean_split_moves"], write_clean_split)
        moved = len(twins["clean_split_moves"])
        console.print(f"wrote a split with no near-twin group across splits to {write_clean_split} ({moved} moved)")
    if json_out is not None:
        write_json(json_out, result)


@data_app.command("patches")
def data_patches(
    src: Annotated[Path, typer.Option("--in", help="folder of large images (any sub-folders, e.g. <class>/)")],
    out: Annotated[Path, typer.Option("--out", help="where the patches go, in the same sub-folders")],
    size: Annotated[int, typer.Option(help="patch side in pixels")] = 400,
    iou: Annotated[float, typer.Option(help="overlap of neighbouring windows (intersection over union)")] = 0.3,
    min_tissue: Annotated[float, typer.Option(help="least tissue fraction (Otsu on saturation) to keep a patch")] = 0.5,
) -> None:
    """Cut large histology images into tissue patches with a sliding window (an ImageFolder tree)."""
    from common.data.patches import cut_patches

    with one_line_errors():
        summary = cut_patches(src, out, size=size, iou=iou, min_tissue=min_tissue)
    console.print(
        f"{summary.patches} patch(es) of {summary.windows} window(s) from {summary.images} image(s) "
        f"written to {out}; {len(summary.skipped)} unreadable image(s) skipped",
        highlight=False,
    )
    for rel, reason in summary.skipped[:20]:
        console.print(f"  {rel}: {reason}", highlight=False)


@node_app.command("check")
def node_check(
    node_config: Annotated[str, typer.Option("--node-config", help="the string given to flower-supernode")],
    dataset: Annotated[str, typer.Option(help="the run's dataset preset (its class list)")] = "brain-mri",
    classes: Annotated[str, typer.Option(help="the run's class list, comma-separated (overrides the preset's)")] = "",
) -> None:
    """Check a node config before ``flower-supernode`` starts: keys, data folder, images per class, key modes.

    Exits 2 with one line at the first problem.
    """
    from common.config import parse_run_config
    from common.node_check import check_node, parse_node_config_string
    from common.presets import get_preset  # not common.experiment: that imports the models (torchvision)

    with one_line_errors():
        cfg = parse_run_config({"dataset": dataset, "classes": classes})
        report = check_node(
            parse_node_config_string(node_config), classes=cfg.class_names, channels=get_preset(cfg.dataset).channels
        )
    node = report.node
    console.print(f"node config: ok ({node.role} {node.name!r})", highlight=False)
    counts = ", ".join(f"{name} {n}" for name, n in report.counts.items())
    console.print(f"data: {report.folder}: {sum(report.counts.values())} images ({counts}); "
                  f"{report.skipped} unreadable, skipped", highlight=False)  # fmt: skip
    if report.missing_classes:
        console.print(f"no folder for: {', '.join(report.missing_classes)} (fine if this node has none)")
    if node.he_secret_context:
        console.print(f"secret key: {node.he_secret_context} (mode 0600)", highlight=False)


@keys_app.command("init")
def keys_init(
    out: Annotated[Path, typer.Option(help="folder for secret.ctx (0600) and public.ctx")],
    poly_modulus_degree: Annotated[int, typer.Option(help="4096, 8192, 16384 or 32768")] = 8192,
    coeff_mod_bit_sizes: Annotated[str, typer.Option(help="comma-separated prime sizes in bits")] = "60,60",
    scale_bits: Annotated[int, typer.Option(help="CKKS scale, as a power of two")] = 40,
) -> None:
    """Generate a CKKS key pair: secret.ctx for hospitals and the evaluator, public.ctx for the server."""
    from common.he.keys import HEParams, create_key_pair

    with one_line_errors():
        try:
            sizes = tuple(int(b) for b in coeff_mod_bit_sizes.split(","))
        except ValueError:
            raise ValueError(f"--coeff-mod-bit-sizes = {coeff_mod_bit_sizes!r}; expected integers like 60,60") from None
        params = HEParams(poly_modulus_degree=poly_modulus_degree, coeff_mod_bit_sizes=sizes, scale_bits=scale_bits)
        secret, public = create_key_pair(out, params)
    console.print(f"wrote {secret} (hospitals and evaluator only, mode 0600) and {public} (aggregation server)")


@model_app.command("decrypt")
def model_decrypt(
    model: Annotated[Path, typer.Option(help="encrypted model directory (a run's model/ under HE)")],
    keys: Annotated[Path, typer.Option(help="secret.ctx")],
    out: Annotated[Path, typer.Option(help="folder for the plaintext model directory")],
    workers: Annotated[int, typer.Option(min=1, help="decryption processes")] = 2,
) -> None:
    """Decrypt an encrypted global model into a plaintext model directory (key-holders only)."""
    from common.he.keys import load_secret_context
    from common.he.model_dir import decrypt_model_dir

    with one_line_errors():
        decrypt_model_dir(model, load_secret_context(keys), out, workers=workers)
    console.print(f"wrote the plaintext model to {out}")


@app.command("evaluate")
def evaluate(
    model: Annotated[Path, typer.Option(help="model directory (model.safetensors + model.json)")],
    data: Annotated[
        Path, typer.Option(help="test folder: PATH/<class>/* or PATH/test/<class>/* (multi-label: PATH/labels.csv)")
    ],
    out: Annotated[Path, typer.Option(help="folder for report.json, predictions.csv, report.md/html and figures/")],
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
) -> None:
    """Score a saved model on any test folder, in the run directory's report schema."""
    from common.calibration import read_calibration
    from common.calibration_metrics import calibrated_report
    from common.data.images import load_folder, resolve_test_folder
    from common.data.labels_csv import load_labels_csv
    from common.data.transforms import normalize
    from common.inference import predict, resolve_device
    from common.models import load_model_dir
    from common.report import build_report
    from common.report.summary import pretraining_text

    with one_line_errors():
        net, spec = load_model_dir(model)
        calibration = read_calibration(model)
        kwargs = {"channels": spec.channels, "size": spec.image_size}
        if spec.multilabel:  # the labels CSV's test rows, each label at its stored threshold (else 0.5)
            folder = data / "test"
            images = load_labels_csv(data, "test", labels=spec.classes, **kwargs)
        else:
            folder = resolve_test_folder(data)
            images = load_folder(folder, classes=spec.classes, **kwargs)
        if len(images) == 0:
            raise ValueError(f"{folder} holds no readable images of the classes {', '.join(spec.classes)}")
        with Progress(console=console) as bar:
            task = bar.add_task("scoring the test images", total=len(images))
            probs, loss = predict(
                net,
                images,
                normalize(spec.mean, spec.std),
                batch_size=batch_size,
                device=resolve_device(device),
                on_batch=lambda n: bar.advance(task, n),
            )
        truth, labels = images.labels.numpy(), spec.classes
        report, probs = calibrated_report(truth, probs, labels, calibration, loss=loss, multilabel=spec.multilabel)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", report)
    write_predictions_csv(
        out / "predictions.csv",
        paths=images.paths,
        y_true=truth,
        probabilities=probs,
        classes=spec.classes,
    )
    summary = {
        "model": f"{spec.architecture} ({model})",
        "test data": str(folder),
        "skipped files": str(len(images.skipped)),
    }
    if spec.pretrained_on is not None:
        summary["pretrained on"] = pretraining_text(asdict(spec.pretrained_on))
    with one_line_errors():
        html = build_report(
            out,
            title="medsilo evaluation",
            summary=summary,
            model_dir=model,
            images_root=folder.resolve().parent,
            progress=True,
        )
    console.print(f"accuracy {report['accuracy']:.4f} on {report['n']} images; report: {html}", highlight=False)
    if images.skipped:
        console.print(f"skipped {len(images.skipped)} unreadable file(s)")


@app.command("report")
def rebuild_report(
    run_dir: Annotated[Path, typer.Argument(help="run directory (output-dir/<run-name>) or an evaluate --out folder")],
    model: Annotated[
        Path | None, typer.Option(help="plaintext model for the Grad-CAM grid (default: RUN_DIR/model)")
    ] = None,
    images: Annotated[
        Path | None, typer.Option(help="folder the test image paths are relative to (default: the run's data-root)")
    ] = None,
    compare: Annotated[
        list[Path] | None, typer.Option(help="another run directory for the privacy–utility section (repeatable)")
    ] = None,
) -> None:
    """Rebuild report.md, report.html and figures/ from history.json, predictions.csv and the model."""
    from common.report import build_report

    with one_line_errors():
        html = build_report(
            run_dir,
            title="medsilo central evaluation",
            model_dir=model,
            images_root=images,
            compare=compare or (),
            progress=True,
        )
    console.print(f"report: {html}", highlight=False)


@app.command("predict")
def predict_images(
    images: Annotated[list[Path], typer.Argument(help="image files: png, jpg, tif, bmp (dcm with pydicom)")],
    model: Annotated[Path, typer.Option(help="model directory (model.safetensors + model.json)")],
    cam: Annotated[Path | None, typer.Option(help="folder for one <stem>_cam.png Grad-CAM overlay per image")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
) -> None:
    """Print each image's calibrated class probabilities and decision and, with --cam, save its Grad-CAM overlay."""
    from PIL import Image

    from common.calibration import read_calibration
    from common.decisions import decide
    from common.explain import class_probabilities, gradcam, load_image, overlay
    from common.inference import resolve_device
    from common.models import load_model_dir

    with one_line_errors():
        net, spec = load_model_dir(model)
        calibration = read_calibration(model)
        net.to(resolve_device(device))
        tensors = [load_image(path, spec) for path in images]
        shared = [stem for stem, n in Counter(path.stem for path in images).items() if n > 1]
        if cam is not None and shared:
            raise ValueError(f"--cam: several images are named {shared[0]!r}; expected distinct file names")
    if cam is not None:
        cam.mkdir(parents=True, exist_ok=True)
    for path, image in zip(images, tensors, strict=True):
        decision = decide(class_probabilities(net, spec, image), spec, calibration)
        probs = decision.probabilities
        best = int(probs.argmax())
        table = Table(title=f"{path}: {spec.classes[best]} (p = {probs[best]:.2f})")
        table.add_column("label" if spec.multilabel else "class")
        table.add_column("probability", justify="right")
        table.add_column("predicted", justify="center")  # multi-label: each label at its threshold
        if spec.multilabel:
            table.add_column("threshold", justify="right")
        for i, (name, p) in enumerate(zip(spec.classes, probs, strict=True)):
            cut = [f"{decision.thresholds[i]:.4g}"] if spec.multilabel else []
            table.add_row(name, f"{p:.4f}", "*" if decision.flagged[i] else "", *cut)
        console.print(table)
        if decision.operating_point is not None:
            console.print(decision.operating_point, highlight=False)
        if cam is not None:
            target = cam / f"{path.stem}_cam.png"
            Image.fromarray(overlay(image, gradcam(net, spec, image, best))).save(target)
            console.print(f"Grad-CAM overlay for {spec.classes[best]}: {target}", highlight=False)


@app.command("ui")
def ui(
    model: Annotated[Path, typer.Option(help="model directory (model.safetensors + model.json)")],
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8501,
    address: Annotated[str, typer.Option(help="interface to serve on; 0.0.0.0 opens it to the network")] = "localhost",
    example: Annotated[Path | None, typer.Option(help="image to show, classified, until something is uploaded")] = None,
) -> None:
    """Serve a local web page: upload an image, see its prediction and Grad-CAM (Streamlit)."""
    from common.models import load_model_dir

    with one_line_errors():
        load_model_dir(model)  # a bad directory fails here in one line, not later in the browser
        if example is not None and not example.is_file():
            raise ValueError(f"example image {example} is not a file; expected an image file")
    page = Path(__file__).with_name("ui_app.py")
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(page),
        "--server.headless",
        "true",
        "--server.address",
        address,
        "--server.port",
        str(port),
        "--browser.gatherUsageStats",
        "false",
        "--",
        "--model",
        str(model.resolve()),
        *(["--example", str(example.resolve())] if example is not None else []),
    ]
    console.print(f"serving {model} at http://{address}:{port} (Ctrl+C stops)", highlight=False)
    raise typer.Exit(code=subprocess.run(command, check=False).returncode)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
