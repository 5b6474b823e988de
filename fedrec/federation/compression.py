"""Upload quantization: what a device sends instead of its dense float32 update.

With ``upload-bits = b`` (8 or 4) the device, *after* its DP clipping, maps every
tensor ``x`` of its update onto ``2^b`` evenly spaced levels between the tensor's own
minimum ``lo`` and maximum ``hi`` (step ``s = (hi - lo) / (2^b - 1)``) by unbiased
stochastic rounding: ``t = (x - lo) / s`` becomes ``floor(t) + 1`` with probability
``t - floor(t)`` and ``floor(t)`` otherwise, so ``E[lo + s code] = x`` exactly and
the error of each coordinate is below one step. The payload is one uint8 array,
``quant-codes``, of two parts:

- the scales: float32 ``[lo, s]`` per tensor, in sorted tensor-name order, as their
  little-endian bytes (8 per tensor);
- every tensor's codes, in the same order, flattened and concatenated (one code per
  byte at 8 bits, two per byte at 4 bits).

One array, because every array in a message carries its own header: that is
``n b / 8`` bytes plus 8 per tensor instead of ``4 n``, just under 1/4 of the dense
upload on the wire at 8 bits, 1/8 at 4 bits. The server knows the tensor names and shapes (the
shared spec) and decodes to float32 (:func:`decode_update`) before its usual checks
(:func:`fedrec.federation.rounds.check_update`) and aggregation. A decoded update may exceed the
clipping norm ``C`` by up to a rounding step per coordinate; DP stays exact because
:class:`fedrec.privacy.dp_fedavg.DPFedAvg` clips every decoded update to ``C`` again
before summing, so one user's contribution to the sum is still bounded by ``C``.

Per-row scales for the embedding tables were not used: a row of 32 codes would carry
8 bytes of scale, 25 % on top, which breaks the 1/4 goal, and per-tensor ranges keep
the quality loss well inside the goal (docs/deployment.md, "Upload quantization").
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedrec.models import Arrays

CODES = "quant-codes"
_SCALE = np.dtype("<f4")  # how the scales are stored at the head of the codes
BITS = (0, 4, 8)  # 0: no quantization, dense float32
_FLOAT32 = np.dtype(np.float32)


def _packed_length(count: int, bits: int) -> int:
    return count if bits == 8 else (count + 1) // 2


def encode_update(update: Arrays, *, bits: int, rng: np.random.Generator) -> Arrays:
    """The quantized payload of ``update`` (``bits`` 4 or 8); ``update`` itself for 0.

    A tensor with a non-finite value gets a NaN scale: it decodes to NaN and the
    server rejects the update as it would the dense one.
    """
    if bits == 0:
        return update
    if bits not in BITS:
        raise ValueError(f"upload-bits must be one of {BITS}, got {bits}")
    levels = (1 << bits) - 1
    codes: list[np.ndarray] = []
    scale = np.zeros((len(update), 2), dtype=np.float32)
    for i, name in enumerate(sorted(update)):
        x = np.asarray(update[name], dtype=np.float64).reshape(-1)
        if x.size == 0 or not np.all(np.isfinite(x)):
            scale[i] = (np.nan, np.nan) if x.size else (0.0, 0.0)
            codes.append(np.zeros(x.size, dtype=np.uint8))
            continue
        # lo and step as the float32 the server will read, so the encoder rounds on the decoder's grid
        lo = np.float32(x.min())
        step = np.float32((x.max() - float(lo)) / levels)
        while step > 0 and float(lo) + levels * float(step) < x.max():  # float32 rounding of step: cover hi
            step = np.nextafter(step, np.float32(np.inf))
        scale[i] = (lo, step)
        if step == 0:
            codes.append(np.zeros(x.size, dtype=np.uint8))
            continue
        t = np.clip((x - float(lo)) / float(step), 0.0, levels)
        low = np.floor(t)
        up = rng.random(x.size) < (t - low)
        codes.append(np.minimum(low + up, levels).astype(np.uint8))
    flat = np.concatenate(codes) if codes else np.zeros(0, dtype=np.uint8)
    if bits == 4:
        if flat.size % 2:
            flat = np.append(flat, np.uint8(0))
        flat = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)
    return {CODES: np.concatenate([scale.astype(_SCALE).view(np.uint8).reshape(-1), flat])}


def decode_update(payload: object, spec: dict[str, tuple[int, ...]], *, bits: int) -> tuple[Arrays | None, str]:
    """``(float32 update, "")`` from a payload, or ``(None, reason)`` if it is malformed.

    ``spec`` is the shared tensors' names and shapes. The reason is one line naming the
    problem (tensor names only), like :func:`fedrec.federation.rounds.check_update`'s.
    """
    if bits not in BITS or bits == 0:
        raise ValueError(f"decode_update needs upload-bits 4 or 8, got {bits}")
    if not isinstance(payload, dict):
        return None, f"encoded update is a {type(payload).__name__}, expected a mapping holding {CODES!r}"
    if set(payload) != {CODES}:
        return None, f"encoded update must hold exactly {CODES!r}, got {sorted(map(str, payload))}"
    blob = payload[CODES]
    names = sorted(spec)
    sizes = [int(np.prod(spec[n], dtype=np.int64)) for n in names]
    total = sum(sizes)
    head = len(names) * 2 * _SCALE.itemsize
    expected = head + _packed_length(total, bits)
    if not isinstance(blob, np.ndarray) or blob.dtype != np.uint8 or blob.shape != (expected,):
        got = f"{blob.dtype} {blob.shape}" if isinstance(blob, np.ndarray) else type(blob).__name__
        return None, f"{CODES} is {got}, expected uint8 ({expected},): {len(names)} scales and {bits}-bit codes"
    scale = blob[:head].view(_SCALE).reshape(len(names), 2).astype(np.float32)
    codes = blob[head:]
    if np.any(scale[:, 1] < 0):
        return None, f"{CODES} has a negative step in its scales"
    if bits == 4:
        unpacked = np.empty(codes.size * 2, dtype=np.uint8)
        unpacked[0::2] = codes & 0x0F
        unpacked[1::2] = codes >> 4
        flat = unpacked[:total]
    else:
        flat = codes
    out: Arrays = {}
    start = 0
    for i, (name, size) in enumerate(zip(names, sizes)):
        lo, step = scale[i].astype(np.float64)
        values = lo + step * flat[start : start + size].astype(np.float64)
        out[name] = values.astype(np.float32).reshape(spec[name])
        start += size
    return out, ""


def payload_scales(payload: Arrays, n_tensors: int) -> np.ndarray:
    """The ``(T, 2)`` float32 ``[lo, step]`` per tensor at the head of a payload."""
    head = n_tensors * 2 * _SCALE.itemsize
    return payload[CODES][:head].view(_SCALE).reshape(n_tensors, 2).astype(np.float32)


def payload_bytes(payload: object) -> int:
    """Bytes of the arrays in an upload (what travels, without message framing)."""
    if not isinstance(payload, Mapping):
        return 0
    return int(sum(v.nbytes for v in payload.values() if isinstance(v, np.ndarray)))


def upload_rng(*, seed: int, round_: int, client: int) -> np.random.Generator:
    """The generator of a client's stochastic rounding in a round (independent of its training draws)."""
    return np.random.default_rng([seed, round_, client, 11])
