"""After the last round: the temperature and the operating point, fitted on the hospitals' validation splits.

Each hospital scores its validation split with the final global model (decrypting it under
HE) and sends fixed-size sums only (``common.calibration_fit``): its NLL at every temperature
of a fixed grid, then, with the temperature picked, its histograms of the calibrated score for
its positive and its negative images. The server adds them up and reads the pooled curve: the
temperature minimising the pooled NLL, the largest threshold whose pooled sensitivity reaches
``target-sensitivity`` (multi-label: per label, by best F1 without a target).

Under HE the sums are encrypted: each hospital encrypts its statistics, the server adds the
ciphertexts as it adds the weights, and the evaluator (a key-holder) decrypts only the sum and
answers with the temperature, the thresholds and their pooled validation figures. The server
then learns those and nothing per hospital. In plaintext the server sees each hospital's
sums (it sees each hospital's weights there too).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common import records as rk
from common.calibration import Calibration
from common.calibration_fit import (
    HISTOGRAMS,
    NLL,
    PICK_PREFIX,
    STATISTICS_KIND,
    STATISTICS_SUM_KIND,
    read_sums,
    statistic_shapes,
)
from common.config import RunConfig
from common.he.ckks import CiphertextSum
from common.he.codec import ParamLayout
from common.he.keys import HEContext
from common.he.payload import EncryptedPayload
from server.roster import NodeRoster

__all__ = ["FederatedCalibration"]

log = logging.getLogger(__name__)


class _Summed:
    """The sum of the valid replies' statistics: plaintext arrays, or (under HE) ciphertexts."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], public: HEContext | None) -> None:
        self.shapes = shapes
        self.layout = ParamLayout.of_shapes(shapes)
        self.public = public
        self.plain = {name: np.zeros(shape) for name, shape in shapes.items()}
        self.encrypted = CiphertextSum(public.codec) if public is not None else None
        self.hospitals = 0

    def problem(self, record: ArrayRecord) -> str | None:
        """Why a reply's statistics cannot be added, or ``None``."""
        if self.public is not None:
            try:
                EncryptedPayload.from_record(record).check_against(
                    self.public, kind=STATISTICS_KIND, layout=self.layout
                )
            except ValueError as err:
                return f"bad encrypted statistics: {err}"
            return None
        if set(record.keys()) != set(self.shapes):
            return f"statistics {sorted(record.keys())}; expected {sorted(self.shapes)}"
        for name, shape in self.shapes.items():
            values = record[name].numpy()
            if values.shape != shape or values.dtype != np.float64:
                return f"'{name}' is {values.dtype} {values.shape}; expected float64 {shape}"
            if not np.isfinite(values).all() or (values < 0).any():
                return f"'{name}' holds a negative or non-finite value"
        return None

    def add(self, record: ArrayRecord) -> None:
        """Add a vetted reply's statistics."""
        if self.encrypted is not None:
            self.encrypted.add(EncryptedPayload.from_record(record).chunks)
        else:
            for name in self.shapes:
                self.plain[name] += record[name].numpy()
        self.hospitals += 1

    def released(self, factor: float) -> ArrayRecord:
        """Under HE: the encrypted sum, for the evaluator, who multiplies it by ``factor`` after decrypting."""
        if self.encrypted is None or self.public is None:
            raise RuntimeError("only an encrypted sum is released to the evaluator")
        payload = EncryptedPayload(
            kind=STATISTICS_SUM_KIND,
            params_fingerprint=self.public.params.fingerprint(),
            key_id=self.public.key_id,
            layout=self.layout,
            chunks=self.encrypted.release(),
            factor=factor,
        )
        return payload.to_record()


class FederatedCalibration:
    """Fits a :class:`Calibration` for the final global model from the hospitals' validation sums."""

    def __init__(
        self,
        cfg: RunConfig,
        grid: Grid,
        *,
        roster: NodeRoster,
        base_config: ConfigRecord,
        public: HEContext | None,
    ) -> None:
        self.cfg = cfg
        self.grid = grid
        self.roster = roster
        self.base_config = base_config
        self.public = public

    def _send(self, node: int, content: RecordDict) -> list[Message]:
        message = Message(content, dst_node_id=node, message_type=f"{MessageType.QUERY}.{rk.CALIBRATE}")
        return list(self.grid.send_and_receive([message], timeout=self.cfg.round_timeout))

    def _config(self, stage: str, **extra: Any) -> ConfigRecord:
        return ConfigRecord({**dict(self.base_config), rk.CALIBRATION_STAGE: stage, **extra})

    def _stage(
        self, stage: str, arrays: ArrayRecord, record: dict[str, Any], **extra: Any
    ) -> dict[str, list[float]] | None:
        """Ask every hospital for ``stage``'s statistics, add the valid ones and read the sum; ``None``: none came."""
        start = time.perf_counter()
        shapes = statistic_shapes(stage, outputs=len(self.cfg.class_names), multilabel=self.cfg.multilabel)
        summed = _Summed(shapes, self.public)
        config = self._config(stage, **extra)
        messages = [
            Message(
                RecordDict({rk.ARRAYS: arrays, rk.CONFIG: config}),
                dst_node_id=node,
                message_type=f"{MessageType.QUERY}.{rk.CALIBRATE}",
            )
            for node in sorted(self.roster.hospitals)
        ]
        replies = list(self.grid.send_and_receive(messages, timeout=self.cfg.round_timeout))
        failures = []
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                problem: str | None = f"error reply: {reply.error.reason}"
            elif node not in self.roster.hospitals or rk.STATISTICS not in reply.content.array_records:
                problem = f"not a hospital of this run, or no '{rk.STATISTICS}' record"
            else:
                problem = summed.problem(reply.content.array_records[rk.STATISTICS])
            if problem is not None:
                log.warning("calibration %s: node %d left out: %s", stage, node, problem)
                failures.append({"node_id": node, "reason": problem})
                continue
            summed.add(reply.content.array_records[rk.STATISTICS])
        answered = {r.metadata.src_node_id for r in replies}
        failures += [
            {"node_id": n, "reason": f"no reply within {self.cfg.round_timeout:.0f}s"}
            for n in sorted(set(self.roster.hospitals) - answered)
        ]
        read = self._read(stage, summed) if summed.hospitals else None
        record[stage] = {"hospitals": summed.hospitals, "failures": failures, "seconds": time.perf_counter() - start}
        return read

    def _read(self, stage: str, summed: _Summed) -> dict[str, list[float]] | None:
        """Read the sum: here in plaintext; under HE on the evaluator, which alone can decrypt it."""
        target = self.cfg.target_sensitivity or None
        if self.public is None:
            return read_sums(stage, summed.plain, target=target)
        if self.roster.evaluator is None:
            raise RuntimeError("encrypted calibration statistics need the evaluator node to read their sum")
        content = RecordDict(
            {
                rk.STATISTICS: summed.released(float(self.roster.total_examples)),
                rk.CONFIG: self._config(PICK_PREFIX + stage),
            }
        )
        replies = self._send(self.roster.evaluator, content)
        if not replies or replies[0].has_error():
            why = replies[0].error.reason if replies else f"no reply within {self.cfg.round_timeout:.0f}s"
            log.warning("calibration %s: the evaluator did not read the sum: %s", stage, why)
            return None
        return {key: [float(v) for v in values] for key, values in replies[0].content[rk.CALIBRATION].items()}

    def fit(self, arrays: ArrayRecord) -> tuple[Calibration, dict[str, Any]]:
        """The calibration of the final model ``arrays``, and its record for ``history.json``."""
        cfg = self.cfg
        record: dict[str, Any] = {"encrypted": self.public is not None}
        temperature: tuple[float, ...] = ()
        threshold: tuple[float, ...] = ()
        images = 0.0
        if cfg.local_val_fraction > 0 and cfg.calibrate:
            read = self._stage(NLL, arrays, record)
            images = read["images"][0] if read else 0.0
            if read and images > 0:
                temperature = tuple(read["temperature"])
        if cfg.local_val_fraction > 0 and (cfg.multilabel or cfg.target_sensitivity):
            read = self._stage(HISTOGRAMS, arrays, record, **{rk.TEMPERATURE: list(temperature or [1.0])})
            if read is not None:
                threshold = self._thresholds(read, record)
                images = images or read["positives"][0] + read["negatives"][0]
        calibration = Calibration(
            temperature=temperature,
            threshold=threshold,
            positive=cfg.positive_classes if threshold and not cfg.multilabel else (),
            target_sensitivity=cfg.target_sensitivity or None,
            source=self._source(temperature, threshold, record, images),
        )
        record.update({key: value or None for key, value in calibration.to_json().items()})
        record["validation_images"] = int(images)
        log.info("calibration: %s; temperature %s, threshold %s", calibration.source, temperature, threshold)
        return calibration, record

    def _thresholds(self, read: dict[str, list[float]], record: dict[str, Any]) -> tuple[float, ...]:
        """The picked thresholds; multi-label labels without pooled positives and negatives keep ``label-threshold``."""
        picked = read["threshold"]
        record["validation_sensitivity"] = [None if math.isnan(v) else v for v in read["sensitivity"]]
        record["validation_specificity"] = [None if math.isnan(v) else v for v in read["specificity"]]
        if not self.cfg.multilabel:
            return () if math.isnan(picked[0]) else (picked[0],)
        return tuple(self.cfg.thresholds[i] if math.isnan(t) else t for i, t in enumerate(picked))

    def _source(
        self, temperature: tuple[float, ...], threshold: tuple[float, ...], record: dict[str, Any], images: float
    ) -> str:
        """How the calibration was fitted, in words, or why not."""
        fitted = [what for what, done in (("temperature", temperature), ("threshold", threshold)) if done]
        if not fitted:
            if not self.cfg.calibrate and not (self.cfg.multilabel or self.cfg.target_sensitivity):
                return "not fitted: calibrate = false"
            if self.cfg.local_val_fraction == 0:
                return "not fitted: the hospitals hold no validation images (local-val-fraction = 0)"
            return "not fitted: no usable validation statistics came back (see history.json's calibration)"
        hospitals = min(stage["hospitals"] for key, stage in record.items() if key in (NLL, HISTOGRAMS))
        how = "encrypted sums read by the evaluator" if self.public is not None else "plaintext sums"
        return (
            f"{' and '.join(fitted)} fitted on {int(images)} validation images of {hospitals} hospital(s), "
            f"federatedly ({how})"
        )
