"""The variant matrix: ids, presets, selectors and the validity rules."""

from __future__ import annotations

import dataclasses

import pytest
from flashinfer_build.variants import (
    AXES,
    PRESETS,
    RULES,
    InvalidVariant,
    Variant,
    expand,
    load_matrix,
    parse_id,
    select,
)
from hypothesis import given
from hypothesis import strategies as st

FULL = load_matrix("full")


def test_ids_unique_and_parse_back():
    ids = FULL.ids()
    assert len(ids) == len(set(ids))
    for v in FULL:
        assert parse_id(v.id) == v


def test_ids_have_the_documented_shape():
    v = Variant(family="prefill", arch="sm90a", mask="causal", pos="rope")
    assert v.id == "prefill_sm90a_bf16_hd128_causal_rope"
    assert (
        Variant(
            family="decode",
            arch="sm80",
            q_dtype="fp16",
            kv_dtype="fp8e4m3",
            head_dim=64,
            mask="sliding_window",
            soft_cap=True,
        ).id
        == "decode_sm80_fp16_kvfp8e4m3_hd64_sliding_window_softcap"
    )
    assert Variant(family="merge", arch="sm80").id == "merge_sm80_bf16"


def test_hash_follows_axis_values():
    a = Variant(family="decode", arch="sm90a")
    assert a.hash == Variant(family="decode", arch="sm90a").hash
    assert a.hash != dataclasses.replace(a, head_dim=64).hash


def test_non_canonical_and_unknown_ids_are_rejected():
    with pytest.raises(InvalidVariant, match="unknown id token"):
        parse_id("decode_sm90a_bf16_hd128_sparkly")
    with pytest.raises(InvalidVariant):
        parse_id("decode_sm90a_bf16_kvbf16_hd128")  # kv dtype equal to q dtype is left out of the id


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load_and_nest(preset):
    matrix = load_matrix(preset)
    assert len(matrix) > 0
    assert set(matrix.ids()) <= set(FULL.ids())
    assert {v.family for v in matrix} == set(AXES["family"])
    assert {v.arch for v in matrix} == set(AXES["arch"])


def test_ci_is_part_of_default():
    assert set(load_matrix("ci").ids()) <= set(load_matrix("default").ids())


def test_selectors():
    ci = load_matrix("ci")
    decode = select(ci, only=("decode_*",))
    assert decode.ids() and all(i.startswith("decode_") for i in decode.ids())
    no_fp8 = select(ci, skip=("*fp8*",))
    assert not any("fp8" in i for i in no_fp8.ids()) and len(no_fp8) < len(ci)
    sm80 = select(ci, archs=("sm80",))
    assert sm80.ids() and all(v.arch == "sm80" for v in sm80)
    both = select(ci, only=("merge_*", "prefill_*"), archs=("sm90a",))
    assert {v.family for v in both} == {"merge", "prefill"} and {v.arch for v in both} == {"sm90a"}
    with pytest.raises(ValueError, match="unknown arch"):
        select(ci, archs=("sm70",))


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        (dict(family="decode", arch="sm90a", q_dtype="bf16", kv_dtype="fp16"), "kv_dtype must equal q_dtype"),
        (dict(family="decode", arch="sm80", mask="causal"), "decode has one query"),
        (dict(family="merge", arch="sm80", pos="rope"), "merge-states kernels"),
        (dict(family="prefill", arch="sm80", head_dim=96), "head_dim must be one of"),
    ],
)
def test_invalid_combinations_name_their_reason(kwargs, reason):
    with pytest.raises(InvalidVariant, match=reason):
        Variant(**kwargs)


def test_expand_counts_pruned_combinations_by_reason():
    matrix = expand(
        {"block": [{"family": ["decode"], "arch": ["sm80"], "mask": ["none", "causal", "custom"]}]}
    )
    assert matrix.ids() == ["decode_sm80_bf16_hd128"]
    ((reason, count),) = matrix.pruned.items()
    assert "decode has one query" in reason and count == 2


def test_unknown_axis_in_a_matrix_file_is_an_error():
    with pytest.raises(InvalidVariant, match="unknown axis"):
        expand({"block": [{"family": ["decode"], "colour": ["red"]}]})


_axis = {name: st.sampled_from(values) for name, values in AXES.items() if name != "head_dim"}


@given(st.fixed_dictionaries({**_axis, "head_dim": st.sampled_from([0, 64, 96, 128, 256])}))
def test_any_combination_is_valid_and_round_trips_or_names_a_rule(kwargs):
    try:
        v = Variant(**kwargs)
    except InvalidVariant as e:
        assert any(reason in str(e) for reason, _ in RULES)
        return
    assert parse_id(v.id) == v
