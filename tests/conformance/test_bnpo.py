"""BNPO against vectors/bnpo.json (reference code changyi7231/BNPO@a9c51b98), every case in the file.

`outputs` is the reference behaviour (reference_compat=True); `guarded_outputs`, where a case has
it, is rlvr's guarded default (else the guarded mode must equal `outputs`). Case names and numbers
are never assumed: another file with the same schema is checked the same way.
"""

import pytest
import torch

from rlvr.advantage.bnpo import BNPO, bnpo_group_means, fit_beta_moments, normalise_rewards
from rlvr.types import AdvantageInput
from tests.conformance.conftest import assert_close, load_vectors

_INTERMEDIATE = {  # vector key -> BetaFit field (group_mean_p is checked separately)
    "p_mean_over_prompts": "mean",
    "p_var_over_prompts_unbiased": "var",
    "a_moment": "a",
    "b_moment": "b",
    "alpha": "alpha",
    "beta": "beta",
}


def _data():
    return load_vectors("bnpo.json")


def _all_cases() -> list[tuple[str, dict]]:
    """Every case: those under `cases`, plus the ordinary cases inside `decomposition`."""
    v = _data()
    found = [(f"cases.{name}", case) for name, case in v["cases"].items()]
    found += [
        (f"decomposition.{name}", case)
        for name, case in v.get("decomposition", {}).items()
        if isinstance(case, dict) and "inputs" in case and "outputs" in case
    ]
    return found


def _group_ids(uids: list) -> torch.Tensor:
    """uid list -> group ids numbered by first appearance (the vectors' per-group order)."""
    index = {u: i for i, u in enumerate(dict.fromkeys(uids))}
    return torch.tensor([index[u] for u in uids])


def _input(inputs: dict, components: dict | None = None) -> AdvantageInput:
    uids = inputs["uid"]
    return AdvantageInput(
        group=_group_ids(uids),
        rewards=torch.tensor(inputs["rewards"], dtype=torch.float32),
        components=components or {},
        lengths=torch.tensor(inputs["response_lengths"]),
        prompt_uids=list(uids),
        step=0,
    )


def _token_matrix(adv: torch.Tensor, inputs: dict) -> torch.Tensor:
    width = inputs["max_response_length"]
    mask = (torch.arange(width)[None, :] < torch.tensor(inputs["response_lengths"])[:, None]).float()
    return adv[:, None] * mask


def _error_type(error: str | None):
    return (
        None
        if error is None
        else {"AssertionError": AssertionError, "ValueError": ValueError}[error.split(":")[0]]
    )


def _check(est: BNPO, inp: AdvantageInput, expected: dict, inputs: dict, where: str) -> None:
    err = _error_type(expected.get("error"))
    if err is not None:
        with pytest.raises(err):
            est(inp)
        return
    adv = est(inp).advantages
    assert_close(adv, expected["advantage_per_sequence"], f"{where}.advantage_per_sequence")
    if "advantage_token_matrix" in expected:
        assert_close(
            _token_matrix(adv, inputs), expected["advantage_token_matrix"], f"{where}.advantage_token_matrix"
        )


def _collected() -> list[tuple[str, dict]]:
    try:
        return _all_cases()
    except pytest.fail.Exception:  # no readable bnpo.json: test_vectors_have_cases fails and names it
        return []


CASES = _collected()
IDS = [where for where, _ in CASES]


def test_vectors_have_cases():
    assert _all_cases(), "bnpo.json holds no case"


@pytest.mark.parametrize("mode", ["reference_compat", "guarded"])
@pytest.mark.parametrize(("where", "case"), CASES, ids=IDS)
def test_case(where, case, mode):
    compat = mode == "reference_compat"
    inputs = case["inputs"]
    est = BNPO(min_value=inputs["min_value"], max_value=inputs["max_value"], reference_compat=compat)
    expected = case["outputs"] if compat else case.get("guarded_outputs") or case["outputs"]
    _check(est, _input(inputs), expected, inputs, f"{where}.{mode}")


@pytest.mark.parametrize(("where", "case"), CASES, ids=IDS)
def test_case_intermediate_fit(where, case):
    inputs, exp = case["inputs"], case.get("intermediate")
    if not exp:
        pytest.skip("no intermediate values")
    r = normalise_rewards(
        torch.tensor(inputs["rewards"], dtype=torch.float32), inputs["min_value"], inputs["max_value"]
    )
    _, per_group = bnpo_group_means(r, _group_ids(inputs["uid"]))
    if "group_mean_p" in exp:
        assert_close(per_group, exp["group_mean_p"], f"{where}.group_mean_p")
    fit = fit_beta_moments(per_group)._asdict()
    for key, field in _INTERMEDIATE.items():
        if key in exp:
            assert_close(fit[field], exp[key], f"{where}.intermediate.{key}")


@pytest.mark.parametrize(("where", "case"), CASES, ids=IDS)
def test_case_guarded_parameters_and_metrics(where, case):
    inputs = case["inputs"]
    if _error_type(case["outputs"].get("error")) is AssertionError:
        pytest.skip("the bounds do not bracket the rewards: both modes raise")
    guarded = case.get("guarded_outputs")
    out = BNPO(min_value=inputs["min_value"], max_value=inputs["max_value"])(_input(inputs))
    if guarded and "alpha_used" in guarded:
        assert_close(out.metrics["advantage/bnpo_alpha"], guarded["alpha_used"], f"{where}.alpha_used")
        assert_close(out.metrics["advantage/bnpo_beta"], guarded["beta_used"], f"{where}.beta_used")
    assert torch.isfinite(out.advantages).all(), f"{where}: guarded mode gave a non-finite advantage"
    assert out.metrics["advantage/bnpo_nan_frac"] == 0.0


def test_decomposition():
    dec = _data().get("decomposition")
    if not dec or "decomposed_advantage" not in dec:
        pytest.skip("no decomposition block")
    acc, fmt = dec["acc_case"], dec["format_case"]
    inputs = acc["inputs"]
    assert fmt["inputs"]["uid"] == inputs["uid"]
    assert (fmt["inputs"]["min_value"], fmt["inputs"]["max_value"]) == (
        inputs["min_value"],
        inputs["max_value"],
    )
    components = {
        "acc": torch.tensor(inputs["rewards"], dtype=torch.float32),
        "format": torch.tensor(fmt["inputs"]["rewards"], dtype=torch.float32),
    }
    # the weighted total is irrelevant when decomposing: give the summed reward, which alone would not fit [0, 1]
    inp = _input({**inputs, "rewards": (components["acc"] + components["format"]).tolist()}, components)
    for compat in (True, False):
        est = BNPO(
            min_value=inputs["min_value"],
            max_value=inputs["max_value"],
            decompose=True,
            reference_compat=compat,
        )
        parts = [c["outputs"] if compat else c.get("guarded_outputs") or c["outputs"] for c in (acc, fmt)]
        errors = [_error_type(p.get("error")) for p in parts]
        if any(errors):
            with pytest.raises(next(e for e in errors if e)):
                est(inp)
            continue
        got = est(inp).advantages
        mean_of_parts = torch.tensor([p["advantage_per_sequence"] for p in parts], dtype=torch.float64).mean(
            0
        )
        assert_close(got, mean_of_parts.tolist(), f"decomposition.mean_of_components(compat={compat})")
        if compat and dec["decomposed_advantage"] is not None:
            assert_close(got, dec["decomposed_advantage"], "decomposition.decomposed_advantage")
