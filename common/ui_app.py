"""The Streamlit page behind ``medsilo ui``: upload an image, see the prediction and its Grad-CAM.

Run as ``streamlit run common/ui_app.py -- --model DIR [--example IMAGE]``; without ``--model``
the model directory comes from the ``MEDSILO_UI_MODEL`` environment variable. ``--example``
names an image that is shown, through the same path as an upload, until something is uploaded.
Nothing leaves the machine: the image is classified in this process and the temporary copy
is deleted.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import streamlit as st
from torch import nn

from common.calibration import Calibration, read_calibration
from common.decisions import Decision, decide
from common.explain import class_probabilities, gradcam, load_image, overlay
from common.models import ModelSpec, load_model_dir

__all__ = [
    "MAX_UPLOAD_MB",
    "MODEL_ENV",
    "example_from_args",
    "explain_upload",
    "model_dir_from_args",
    "upload_types",
]

MAX_UPLOAD_MB = 20
MODEL_ENV = "MEDSILO_UI_MODEL"


def upload_types() -> tuple[str, ...]:
    """The accepted file extensions: png and jpeg, and dcm when pydicom is installed."""
    dicom = ("dcm",) if importlib.util.find_spec("pydicom") is not None else ()
    return ("png", "jpg", "jpeg", *dicom)


def _page_args(argv: Sequence[str]) -> argparse.Namespace:
    """The page's own options in ``argv``; anything else (pytest's, Streamlit's) is ignored."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--model")
    parser.add_argument("--example")
    known, _ = parser.parse_known_args(list(argv))
    return known


def model_dir_from_args(argv: Sequence[str], environ: Mapping[str, str]) -> Path:
    """The model directory: ``--model DIR`` in ``argv``, else ``$MEDSILO_UI_MODEL``."""
    model = _page_args(argv).model or environ.get(MODEL_ENV)
    if not model:
        raise ValueError(f"no model directory; expected 'medsilo ui --model DIR' or {MODEL_ENV}=DIR")
    return Path(model)


def example_from_args(argv: Sequence[str]) -> Path | None:
    """The image shown before anything is uploaded: ``--example IMAGE`` in ``argv``, else None."""
    example = _page_args(argv).example
    return Path(example) if example else None


def _example_bytes(path: Path) -> bytes:
    """The bytes of the ``--example`` image.

    Raises:
        ValueError: the path is no readable file.
    """
    try:
        return path.read_bytes()
    except OSError:
        raise ValueError(f"example image {path} is not a readable file; expected an image for --example") from None


def explain_upload(
    name: str, data: bytes, model: nn.Module, spec: ModelSpec, calibration: Calibration
) -> tuple[Decision, np.ndarray]:
    """The calibrated decision (probabilities ``(K,)``) and the Grad-CAM overlay ``uint8 (S, S, 3)`` of one upload.

    Raises:
        ValueError: the upload is too large, of another type, or not a readable image.
    """
    if len(data) > MAX_UPLOAD_MB * 2**20:
        raise ValueError(f"{name} is {len(data) / 2**20:.1f} MB; expected at most {MAX_UPLOAD_MB} MB")
    suffix = Path(name).suffix.lower().lstrip(".")
    if suffix not in upload_types():
        raise ValueError(f"{name} is not a supported image; expected a {', '.join(upload_types())} file")
    with tempfile.TemporaryDirectory(prefix="medsilo-ui-") as folder:
        path = Path(folder) / f"upload.{suffix}"
        path.write_bytes(data)
        try:
            image = load_image(path, spec)
        except ValueError:
            raise ValueError(f"{name} is not a readable image; expected a {', '.join(upload_types())} file") from None
    decision = decide(class_probabilities(model, spec, image), spec, calibration)
    return decision, overlay(image, gradcam(model, spec, image, int(decision.probabilities.argmax())))


@st.cache_resource(show_spinner="loading the model")
def _load(model_dir: str) -> tuple[nn.Module, ModelSpec, Calibration]:
    return (*load_model_dir(model_dir), read_calibration(model_dir))


@st.cache_resource
def _model_lock() -> threading.Lock:
    """One explanation at a time: Grad-CAM hooks into the model that every session shares."""
    return threading.Lock()


def main() -> None:
    """Render the page."""
    st.set_page_config(page_title="medsilo", layout="centered")
    st.title("medsilo: image classification with Grad-CAM")
    try:
        model_dir = model_dir_from_args(sys.argv[1:], os.environ)
        model, spec, calibration = _load(str(model_dir))
    except ValueError as err:
        st.error(str(err))
        st.stop()
    temperature = ", ".join(f"{t:.3g}" for t in calibration.temperature)
    scaled = f"; calibration temperature {temperature}" if temperature else ""
    st.caption(f"{spec.architecture} from {model_dir}; classes: {', '.join(spec.classes)}{scaled}")
    # no type= filter: Streamlit would reject other files with a traceback, explain_upload says why in one line
    upload = st.file_uploader(
        f"Image to classify ({', '.join(upload_types())})", max_upload_size=MAX_UPLOAD_MB, key="upload"
    )
    if upload is not None:
        name, data = upload.name, upload.getvalue()
    else:
        example = example_from_args(sys.argv[1:])
        if example is None:
            return
        try:
            name, data = example.name, _example_bytes(example)
        except ValueError as err:
            st.error(str(err))
            return
        st.info(f"Example: {name} (upload an image to classify your own)")
    try:
        with _model_lock():
            decision, heat = explain_upload(name, data, model, spec, calibration)
    except ValueError as err:
        st.error(str(err))
        return
    probs = decision.probabilities
    best = int(probs.argmax())
    st.subheader(f"Prediction: {spec.classes[best]} (p = {probs[best]:.2f})")
    if decision.operating_point is not None:
        st.markdown(f"**Operating point**: {decision.operating_point}")
    for i, (name, p) in enumerate(zip(spec.classes, probs, strict=True)):
        cut = ""
        if spec.multilabel:  # each label against its own threshold
            cut = f" (threshold {decision.thresholds[i]:.3g}{': flagged' if decision.flagged[i] else ''})"
        st.progress(min(max(float(p), 0.0), 1.0), text=f"{name}: {p:.3f}{cut}")
    st.image(heat, caption=f"Grad-CAM for {spec.classes[best]}: red marks the evidence", width="stretch")


if __name__ == "__main__":
    main()
