"""transforms.audio: streaming decode/resample/cut against a literal whole-track ImageBind recipe.

Every test writes its own small media with PyAV from a seeded synthetic waveform; no network.
Run with ``-s`` to see the worst mel difference per case.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torchaudio

from schemas.reasons import RejectReason
from transforms.audio import (
    AudioDecodeError,
    EmptyMediaFile,
    NoAudioStream,
    StreamingResampler,
    WindowCutter,
    WindowRequest,
    WindowStatus,
    audio_quality,
    decode_windows,
    iter_audio_chunks,
    log_mel,
)

MEL_TOL = 1e-4
RESAMPLE_TOL = 1e-5


def resample_stream(chunks, orig_sr: int, new_sr: int = 16000):
    """Drive StreamingResampler (what the build's audio tracker runs) over chunks; the non-empty pieces."""
    resampler = StreamingResampler(orig_sr, new_sr)
    for chunk in chunks:
        out = resampler.push(chunk)
        if out.shape[-1]:
            yield out
    out = resampler.finish()
    if out.shape[-1]:
        yield out


# --------------------------------------------------------------------------- media helpers


def _synthetic(sr: int, channels: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Tones + noise, different per channel, so channel handling mistakes show up in the mel."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(sr * seconds)) / sr
    rows = []
    for c in range(channels):
        f0 = 220.0 * (c + 1)
        x = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.1 * np.sin(2 * np.pi * 3100 * t + c)
        x += 0.05 * rng.standard_normal(t.shape) + 0.02 * (c + 1)  # DC offset: mean removal matters
        rows.append(x)
    return np.stack(rows).astype(np.float32)


def _write_aac(path: Path, wave: np.ndarray, sr: int, *, pts_offset: int = 0, options=None) -> None:
    layout = "mono" if wave.shape[0] == 1 else "stereo"
    with av.open(str(path), "w", options=options or {}) as out:
        stream = out.add_stream("aac", rate=sr, layout=layout)
        for i in range(0, wave.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(wave[:, i : i + 1024]), format="fltp", layout=layout
            )
            frame.sample_rate = sr
            frame.pts = i + pts_offset
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def _write_wav(path: Path, wave: np.ndarray, sr: int) -> None:
    """16-bit packed PCM: exercises the integer, interleaved decode path."""
    layout = "mono" if wave.shape[0] == 1 else "stereo"
    pcm = np.round(np.clip(wave, -1, 1) * 32767).astype(np.int16)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=sr, layout=layout)
        for i in range(0, pcm.shape[1], 4096):
            block = np.ascontiguousarray(pcm[:, i : i + 4096].T).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(block, format="s16", layout=layout)
            frame.sample_rate = sr
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def _write_video_only(path: Path) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 40, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


# --------------------------------------------------------------------------- literal reference


@dataclass(frozen=True)
class WholeTrack:
    wave: np.ndarray  # float32 (C, N), native rate
    sample_rate: int
    start_s: float


def _load_whole(path: Path) -> WholeTrack:
    """Whole file in one array, written independently of transforms.audio."""
    planes = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(audio=0)):
            if i == 0:
                sr, start_s = frame.sample_rate, float(frame.pts * frame.time_base)
            arr = frame.to_ndarray()
            if frame.format.name == "s16":
                arr = arr.reshape(-1, frame.layout.nb_channels).T.astype(np.float32) / 32768.0
            else:
                assert frame.format.name == "fltp", frame.format.name
            planes.append(arr.astype(np.float32))
    return WholeTrack(np.concatenate(planes, axis=1), sr, start_s)


def _imagebind_mel(track: WholeTrack, start_s: float, channels: str = "first") -> np.ndarray:
    """ImageBind's load_and_transform_audio_data + waveform2melspec, spelled out literally."""
    waveform = torchaudio.functional.resample(torch.from_numpy(track.wave), track.sample_rate, 16000)
    start = round((start_s - track.start_s) * 16000)
    assert start >= 0 and start + 32000 <= waveform.shape[1], "reference windows must lie inside the track"
    clip = waveform[:, start : start + 32000]
    if channels == "mean":
        clip = clip.mean(dim=0, keepdim=True)
    clip = clip - clip.mean()
    fbank = torchaudio.compliance.kaldi.fbank(
        clip,
        htk_compat=True,
        sample_frequency=16000,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=128,
        dither=0.0,
        frame_length=25,
        frame_shift=10,
    )
    fbank = fbank.transpose(0, 1)
    p = 204 - fbank.size(1)
    fbank = torch.nn.ZeroPad2d((0, p, 0, 0))(fbank) if p > 0 else fbank[:, :204]
    fbank = fbank.unsqueeze(0)
    return ((fbank - (-4.268)) / 9.138).numpy()


def _track_len_16k(track: WholeTrack) -> int:
    return int(np.ceil(16000 * track.wave.shape[1] / track.sample_rate))


# --------------------------------------------------------------------------- mel parity


@dataclass(frozen=True)
class Source:
    name: str
    sr: int
    channels: int
    kind: str  # "mp4" | "m4a" | "wav" | "mkv-negative-start"


SOURCES = [
    Source("mp4-aac-44k-mono", 44100, 1, "mp4"),
    Source("mp4-aac-48k-stereo", 48000, 2, "mp4"),
    Source("m4a-aac-44k-stereo", 44100, 2, "m4a"),
    Source("wav-s16-48k-mono", 48000, 1, "wav"),
    Source("wav-s16-44k-stereo", 44100, 2, "wav"),
    Source("mkv-aac-48k-stereo-negative-start", 48000, 2, "mkv-negative-start"),
]


def _make_source(tmp_path: Path, src: Source, seconds: float = 6.5) -> Path:
    wave = _synthetic(src.sr, src.channels, seconds)
    if src.kind == "wav":
        path = tmp_path / f"{src.name}.wav"
        _write_wav(path, wave, src.sr)
    elif src.kind == "mkv-negative-start":
        # Matroska keeps negative timestamps when asked to; the track then starts at -0.05 s.
        path = tmp_path / f"{src.name}.mkv"
        _write_aac(path, wave, src.sr, pts_offset=-src.sr // 20, options={"avoid_negative_ts": "disabled"})
    else:
        path = tmp_path / f"{src.name}.{src.kind}"
        _write_aac(path, wave, src.sr)
    return path


WORST_MEL_DIFF: dict[str, float] = {}


@pytest.mark.parametrize("channels", ["first", "mean"])
@pytest.mark.parametrize("src", SOURCES, ids=[s.name for s in SOURCES])
def test_mel_parity_with_whole_track_imagebind(tmp_path: Path, src: Source, channels: str) -> None:
    path = _make_source(tmp_path, src)
    track = _load_whole(path)
    if src.kind == "mkv-negative-start":
        assert track.start_s < 0
    n16 = _track_len_16k(track)
    last = track.start_s + (n16 - 32000) / 16000  # ends exactly on the track's last sample
    starts = {
        "first-sample": track.start_s,
        "t0": max(0.0, track.start_s),
        "overlap-a": 1.0,
        "overlap-b": 2.5,
        "last": last,
    }
    requests = [WindowRequest(name, s) for name, s in starts.items()]

    results = list(decode_windows(path, requests, channels=channels, chunk_s=0.37))

    assert sorted(r.id for r in results) == sorted(starts)
    worst = 0.0
    for r in results:
        assert r.status is WindowStatus.OK, (r.id, r.status, r.detail)
        assert r.mel is not None and r.mel.shape == (1, 128, 204) and r.mel.dtype == np.float32
        ref = _imagebind_mel(track, r.start_s, channels)
        worst = max(worst, float(np.abs(r.mel - ref).max()))
    WORST_MEL_DIFF[f"{src.name}/{channels}"] = worst
    print(f"\n[mel parity] {src.name} channels={channels}: worst |diff| = {worst:.3e}")
    assert worst <= MEL_TOL


@pytest.fixture(scope="module", autouse=True)
def _report_worst_mel_difference():
    """After the module: print the worst parity difference over the cases that ran (``pytest -s``).
    Each case asserts its own bound; this only summarises, so it cannot pass or fail on its own."""
    yield
    if WORST_MEL_DIFF:
        case, worst = max(WORST_MEL_DIFF.items(), key=lambda kv: kv[1])
        print(f"\n[mel parity] worst over {len(WORST_MEL_DIFF)} cases: {worst:.3e} ({case})")


# --------------------------------------------------------------------------- streaming resample


@pytest.mark.parametrize("sr", [44100, 48000, 22050, 8000])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("chunk", [1000, 4097, 65536])
def test_streaming_resample_matches_whole_track(sr: int, channels: int, chunk: int) -> None:
    x = np.random.default_rng(sr + channels).uniform(-1, 1, (channels, round(sr * 2.31) + 7)).astype(np.float32)
    ref = torchaudio.functional.resample(torch.from_numpy(x), sr, 16000).numpy()

    resampler = StreamingResampler(sr)
    pieces, peak = [], 0
    for i in range(0, x.shape[1], chunk):
        pieces.append(resampler.push(x[:, i : i + chunk]))
        peak = max(peak, resampler.buffered)
    pieces.append(resampler.finish())
    got = np.concatenate(pieces, axis=1)

    assert got.shape == ref.shape
    assert float(np.abs(got - ref).max()) <= RESAMPLE_TOL
    # The carried tail is shorter than one kernel span, whatever the chunk or track length.
    assert peak < resampler._klen


@pytest.mark.parametrize("length", [1, 5, 40, 441, 500])
def test_streaming_resample_tiny_tracks(length: int) -> None:
    x = np.random.default_rng(length).uniform(-1, 1, (2, length)).astype(np.float32)
    ref = torchaudio.functional.resample(torch.from_numpy(x), 44100, 16000).numpy()
    got = np.concatenate(list(resample_stream((x[:, i : i + 3] for i in range(0, length, 3)), 44100)), axis=1)
    assert got.shape == ref.shape
    assert float(np.abs(got - ref).max()) <= RESAMPLE_TOL


def test_streaming_resample_empty_track() -> None:
    # torchaudio itself cannot resample zero samples; the stream just yields nothing.
    assert list(resample_stream([np.zeros((2, 0), np.float32)], 44100)) == []


def test_resample_passthrough_at_16k() -> None:
    x = np.random.default_rng(1).uniform(-1, 1, (1, 5000)).astype(np.float32)
    got = np.concatenate(list(resample_stream([x[:, :1234], x[:, 1234:]], 16000)), axis=1)
    np.testing.assert_array_equal(got, x)


# --------------------------------------------------------------------------- window cutter


def _ramp(n: int, channels: int = 2) -> np.ndarray:
    # Sample value = its index (exact in float32 below 2**24), so any misplacement is visible.
    base = np.arange(n, dtype=np.float32)
    return np.stack([base + 0.5 * c for c in range(channels)])


def test_cutter_overlapping_windows_each_once_as_soon_as_passed() -> None:
    n, chunk = 16000 * 9 + 123, 1777
    stream = _ramp(n)
    requests = [WindowRequest(i, 0.5 * i) for i in range(14)]  # stride 0.5 s: 4-fold overlap
    cutter = WindowCutter(requests)
    emitted: dict[int, np.ndarray] = {}
    for i in range(0, n, chunk):
        total = min(n, i + chunk)
        for w in cutter.push(stream[:, i : i + chunk]):
            assert w.id not in emitted
            assert w.status is WindowStatus.OK
            # Emitted by the push that completed it, not later.
            assert round(w.start_s * 16000) + 32000 > total - chunk
            emitted[w.id] = w.samples
        assert cutter.buffered <= 32000 + chunk
    assert not cutter.finish()
    assert sorted(emitted) == list(range(14))
    for i, samples in emitted.items():
        first = 8000 * i
        np.testing.assert_array_equal(samples, stream[:, first : first + 32000])
    assert cutter.max_buffered <= 32000 + chunk


def test_cutter_edges_pad_or_flag_and_never_drop() -> None:
    n = 16000 * 5
    stream = _ramp(n, channels=1) + 1.0  # +1 so zero padding is distinguishable from sample 0
    requests = [
        WindowRequest("way-before", -1.0),
        WindowRequest("pad-start", -0.03),
        WindowRequest("inside", 1.0),
        WindowRequest("pad-end", 3.02),
        WindowRequest("over-end", 3.5),
        WindowRequest("beyond", 10.0),
    ]
    cutter = WindowCutter(list(reversed(requests)), tolerance_s=0.05)
    got = []
    for i in range(0, n, 3000):
        got += cutter.push(stream[:, i : i + 3000])
        assert cutter.buffered <= 32000 + 3000
    got += cutter.finish()

    by_id = {w.id: w for w in got}
    assert len(got) == len(requests) == len(by_id)
    assert [w.id for w in got] == [r.id for r in requests]  # start order

    assert by_id["way-before"].status is WindowStatus.OUT_OF_RANGE
    assert by_id["way-before"].samples is None
    assert by_id["way-before"].reject_reason is RejectReason.AUDIO_OUT_OF_RANGE
    assert by_id["over-end"].status is WindowStatus.OUT_OF_RANGE
    assert by_id["beyond"].missing_s == pytest.approx(2.0)

    pad_start = by_id["pad-start"]
    assert pad_start.status is WindowStatus.PADDED and pad_start.reject_reason is None
    np.testing.assert_array_equal(pad_start.samples[:, :480], 0)
    np.testing.assert_array_equal(pad_start.samples[:, 480:], stream[:, : 32000 - 480])

    pad_end = by_id["pad-end"]
    assert pad_end.status is WindowStatus.PADDED and pad_end.missing_s == pytest.approx(0.02)
    np.testing.assert_array_equal(pad_end.samples[:, : 32000 - 320], stream[:, 48320:])
    np.testing.assert_array_equal(pad_end.samples[:, 32000 - 320 :], 0)

    np.testing.assert_array_equal(by_id["inside"].samples, stream[:, 16000:48000])


def test_cutter_out_of_range_before_start_is_flagged_immediately() -> None:
    cutter = WindowCutter([WindowRequest("a", -5.0), WindowRequest("b", 0.0)], stream_start_s=0.0)
    first = cutter.push(np.zeros((1, 10), np.float32))
    assert [w.id for w in first] == ["a"]
    assert [w.id for w in cutter.finish()] == ["b"]


def test_cutter_with_no_samples_flags_everything() -> None:
    cutter = WindowCutter([WindowRequest("a", 0.0), WindowRequest("b", 1.0)])
    out = cutter.finish()
    assert [w.status for w in out] == [WindowStatus.OUT_OF_RANGE] * 2


# --------------------------------------------------------------------------- decode, mel, quality


def test_decode_chunks_are_contiguous_and_bounded(tmp_path: Path) -> None:
    src = Source("neg", 48000, 2, "mkv-negative-start")
    path = _make_source(tmp_path, src, seconds=3.0)
    track = _load_whole(path)
    chunks = list(iter_audio_chunks(path, chunk_s=0.25))
    assert chunks[0].start_s == pytest.approx(track.start_s) and track.start_s == pytest.approx(-0.05)
    assert all(c.sample_rate == 48000 and c.channels == 2 and c.samples.dtype == np.float32 for c in chunks)
    assert max(c.samples.shape[1] for c in chunks) < 0.25 * 48000 + 2048  # chunk + one AAC frame
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert b.start_s == pytest.approx(a.start_s + a.samples.shape[1] / 48000)
    np.testing.assert_array_equal(np.concatenate([c.samples for c in chunks], axis=1), track.wave)


def test_decode_windows_end_to_end_statuses(tmp_path: Path) -> None:
    src = Source("e2e", 44100, 1, "mp4")
    path = _make_source(tmp_path, src, seconds=4.0)
    n16 = _track_len_16k(_load_whole(path))
    tail_start = (n16 - 32000 + 400) / 16000  # 25 ms past the end: padded
    requests = [
        WindowRequest("k0", 0.0),
        WindowRequest("k1", 1.0),
        WindowRequest("tail", tail_start),
        WindowRequest("late", 3.0),
    ]
    results = {r.id: r for r in decode_windows(path, requests, tolerance_s=0.05)}
    assert set(results) == {"k0", "k1", "tail", "late"}
    assert results["k0"].status is WindowStatus.OK and results["k0"].quality is not None
    assert results["tail"].status is WindowStatus.PADDED and results["tail"].mel.shape == (1, 128, 204)
    late = results["late"]
    assert late.status is WindowStatus.OUT_OF_RANGE and late.mel is None
    assert late.reject_reason is RejectReason.AUDIO_OUT_OF_RANGE and "outside" in late.detail


def test_no_audio_stream(tmp_path: Path) -> None:
    path = tmp_path / "video_only.mp4"
    _write_video_only(path)
    with pytest.raises(NoAudioStream) as err:
        list(decode_windows(path, [WindowRequest("a", 0.0)]))
    assert err.value.reason is RejectReason.NO_AUDIO_STREAM


def test_zero_byte_and_garbage_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(EmptyMediaFile) as err:
        list(iter_audio_chunks(empty))
    assert err.value.reason is RejectReason.EMPTY_FILE
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a media file" * 64)
    with pytest.raises(AudioDecodeError):
        list(iter_audio_chunks(garbage))


def test_log_mel_channel_modes() -> None:
    mono = _synthetic(16000, 1, 2.0)
    assert log_mel(mono).shape == (1, 128, 204)
    # Channel 1 chosen so the mean over all channels equals mono's mean: "first" then sees exactly
    # mono's waveform (ImageBind ignores channel 1), and "mean" averages to a constant (silence).
    stereo = np.concatenate([mono, 2 * mono.mean() - mono])
    np.testing.assert_allclose(log_mel(stereo, "first"), log_mel(mono), atol=1e-4)
    silent = log_mel(stereo, "mean")
    assert float(silent.std()) < float(log_mel(mono).std())
    with pytest.raises(ValueError):
        log_mel(mono, "left")  # type: ignore[arg-type]


def test_audio_quality() -> None:
    t = np.arange(32000) / 16000
    sine = (0.5 * np.sin(2 * np.pi * 440 * t))[None].astype(np.float32)
    q = audio_quality(sine)
    assert q.rms_dbfs == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=1e-3)
    assert q.clipped_frac == 0.0
    assert audio_quality(np.zeros((2, 32000), np.float32)).rms_dbfs == -120.0
    hot = np.clip(2 * np.sin(2 * np.pi * 440 * t), -1, 1)[None].astype(np.float32)
    assert 0.5 < audio_quality(hot).clipped_frac < 1.0


# --------------------------------------------------------------------------- log-mel internals


@pytest.mark.parametrize("channels", ["first", "mean"])
def test_log_mel_is_bit_identical_to_kaldi_fbank(channels: str) -> None:
    """log_mel builds fbank's constant parts once; the numbers must stay exactly fbank's."""
    rng = np.random.default_rng(7)
    cases = [rng.normal(0, s, (2, 32000)).astype(np.float32) for s in (1e-4, 0.05, 0.5)]
    cases += [np.zeros((2, 32000), np.float32), _synthetic(16000, 1, 2.0), rng.uniform(-1, 1, (1, 20000))]
    for x in cases:
        w = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if channels == "mean":
            w = w.mean(dim=0, keepdim=True)
        w = w - w.mean()
        fbank = torchaudio.compliance.kaldi.fbank(
            w, htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
            num_mel_bins=128, dither=0.0, frame_length=25, frame_shift=10,
        ).T  # fmt: skip
        fbank = torch.nn.functional.pad(fbank, (0, max(0, 204 - fbank.shape[1])), value=0.0)[:, :204]
        ref = ((fbank - (-4.268)) / 9.138)[None].numpy()
        got = log_mel(x, channels)
        assert got.dtype == np.float32 and got.shape == (1, 128, 204)
        np.testing.assert_array_equal(got, ref)
