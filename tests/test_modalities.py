"""The modality registry agrees with the index schema, the reject reasons and the training config."""

from __future__ import annotations

from schemas import modalities as M
from schemas.reasons import INPUT_LEVEL, QUALITY_FILTER, RejectReason
from schemas.tables import INDEX_SCHEMA, member_column
from training.config import LOGIT_SCALES, MODALITIES


def test_every_modality_has_its_columns_in_the_index():
    names = set(INDEX_SCHEMA.names)
    for m in M.REGISTRY:
        assert m.has_column in names, m.name
        assert INDEX_SCHEMA.field(m.has_column).nullable is False
        for member in m.members:
            assert member_column(member) in names, member
        assert (m.source_column in names) if m.has_source else (f"source_{m.name}" not in names)
        assert (m.sync_column in names) if m.has_sync else (f"sync_err_{m.name}_ms" not in names)
    # and nothing per-modality in the index that the registry does not know
    assert {c for c in names if c.startswith("has_")} == {m.has_column for m in M.REGISTRY}
    assert {c for c in names if c.startswith("sha256_")} == {member_column(x) for x in M.MEMBERS}


def test_members_are_unique_and_ordered_as_the_contract_says():
    # SPEC §4: the member order written into every tar
    assert M.MEMBERS == ("jpg", "frame1.jpg", "mel.npy", "depth.png", "thermal.png", "imu.npy", "txt", "json")
    assert len(set(M.MEMBERS)) == len(M.MEMBERS)
    assert M.VIDEO.members == ("jpg", "frame1.jpg") and M.META_MEMBER not in {m.member for m in M.REGISTRY}


def test_trainable_and_paired_image():
    assert M.NAMES == ("video", "audio", "depth", "thermal", "imu", "text")
    assert M.TRAINABLE == ("audio", "depth", "thermal", "imu")
    assert MODALITIES == M.TRAINABLE
    assert set(LOGIT_SCALES) == set(M.TRAINABLE)
    assert M.PAIRED_IMAGE.name == "video" and not M.PAIRED_IMAGE.trainable
    assert M.TRAINABLE_MEMBER == {"audio": "mel.npy", "depth": "depth.png", "thermal": "thermal.png", "imu": "imu.npy"}


def test_reasons_belong_to_one_modality_and_are_codes():
    seen: dict[RejectReason, str] = {}
    for m in M.REGISTRY:
        for r in m.reasons:
            assert isinstance(r, RejectReason)
            assert r not in seen, f"{r} claimed by {seen.get(r)} and {m.name}"
            seen[r] = m.name
        if m.missing_reason is not None:
            assert m.missing_reason in m.reasons


def test_every_reason_code_has_a_place():
    # each code is input-level, one modality's own, or of a window / any stream (WINDOW_LEVEL)
    owned = {r: m.name for m in M.REGISTRY for r in m.reasons}
    for r in RejectReason:
        assert r in INPUT_LEVEL or r in owned or r in M.WINDOW_LEVEL, f"{r} has no place"
    assert not (M.WINDOW_LEVEL & set(owned)), "a window-level code is also one modality's"
    assert not (M.WINDOW_LEVEL & INPUT_LEVEL)
    # the new per-modality codes, by name
    expect = {
        "audio": {"audio_silent", "audio_clipped", "audio_gap", "audio_format_change"},
        "video": {"frame_black", "frame_white", "frame_blurred", "frame_frozen"},
        "depth": {"depth_invalid", "depth_bit_depth", "depth_implausible"},
        "thermal": {"thermal_flat"},
        "imu": {"imu_saturated", "imu_clock_step"},
    }
    for mod, codes in expect.items():
        assert codes <= {r.value for r in M.BY_NAME[mod].reasons}, mod
    # every quality filter judges exactly one modality
    assert all(r in owned for r in QUALITY_FILTER)


def test_present_reads_primary_members():
    got = M.present({"jpg": b"", "frame1.jpg": b"", "imu.npy": b"", "json": b""})
    assert got == {"video": True, "audio": False, "depth": False, "thermal": False, "imu": True, "text": False}
