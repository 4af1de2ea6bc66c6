"""The one typed config: its rules, and the command-line flags generated from it."""

import argparse
import re

import pytest
from pydantic import BaseModel, ValidationError

from optishear.cli import main
from optishear.cli.flags import add_config_flags, config_body, config_from_flags
from optishear.config import (
    AllocationConfig,
    CalibrationConfig,
    EvaluationConfig,
    PlanConfig,
    PruneConfig,
    SearchCalibrationConfig,
    SearchConfig,
    config_error,
    default_sparsity,
)
from optishear.core.errors import ConfigError
from optishear.core.genome import WANDA_GENOME, Genome
from optishear.core.patterns import Pattern

GENOME = Genome.parse("f1=sqrt,beta=inv_col_sum")


def _search(**fields) -> SearchConfig:
    return SearchConfig(model="tiny", **fields)


def _invalid(config_class: type[BaseModel], /, **fields) -> str:
    with pytest.raises(ValidationError) as info:
        config_class(**fields)
    return str(config_error(info.value))


# -- the default target -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pattern", "expected"),
    [("unstructured", 0.5), ("2:4", 0.5), ("1:4", 0.25), ("3:4", 0.75), ("4:8", 0.5)],
)
def test_the_default_sparsity_is_n_over_m_or_a_half(pattern, expected) -> None:
    assert default_sparsity(Pattern.parse(pattern)) == expected
    for config in (_search(pattern=pattern), PruneConfig(pattern=pattern)):
        assert config.sparsity == expected  # filled in, not left None
        assert config.target == expected
        assert config.model_dump()["sparsity"] == expected


def test_an_explicit_plan_without_a_sparsity_targets_its_mean() -> None:
    plan = PlanConfig(kind="explicit", block_sparsity=(0.25, 0.75, 0.5))
    assert PruneConfig(plan=plan).sparsity == pytest.approx(0.5, abs=1e-12)
    uneven = PlanConfig(kind="explicit", block_sparsity=(0.2, 0.4))
    assert PruneConfig(plan=uneven).sparsity == pytest.approx(0.3, abs=1e-12)
    # a given sparsity is kept (the prune checks it against the weighted mean)
    assert PruneConfig(sparsity=0.4, plan=uneven).sparsity == 0.4
    assert _search(sparsity=0.6).target == 0.6


def test_an_n_m_pattern_with_another_sparsity_is_refused() -> None:
    for model in (SearchConfig, PruneConfig):
        fields = {"model": "tiny"} if model is SearchConfig else {}
        message = _invalid(model, sparsity=0.6, pattern="2:4", **fields)
        assert message == (
            "an 2:4 pattern prunes exactly 0.5 of the weights, but sparsity 0.6 was asked for"
        )
    assert _search(sparsity=0.5, pattern="2:4").pattern == Pattern(2, 4)


def test_a_structured_pattern_keeps_every_block_at_n_over_m() -> None:
    for stages in ("layerwise", "joint"):
        message = _invalid(SearchConfig, model="tiny", pattern="2:4", stages=stages)
        assert "only the metric can be searched" in message
    assert _search(pattern="2:4", stages="both").stage_list() == ["metric"]
    assert _search(stages="both").stage_list() == ["metric", "layerwise"]
    for plan in (PlanConfig(kind="owl"), PlanConfig(kind="explicit", block_sparsity=(0.5,))):
        assert "use a uniform plan" in _invalid(PruneConfig, pattern="4:8", plan=plan)


def test_per_block_offsets_must_stay_within_zero_and_one_when_plans_are_searched() -> None:
    for stages in ("both", "layerwise", "joint"):
        message = _invalid(SearchConfig, model="tiny", sparsity=0.9, step=0.1, stages=stages)
        assert message == (
            "per-block sparsity 0.9 +- 1 x 0.1 must stay within [0, 1): lower step or levels"
        )
    assert _search(sparsity=0.9, step=0.1, stages="metric").target == 0.9  # no plan searched
    assert _search(sparsity=0.9, step=0.05, levels=1).target == 0.9
    assert "levels" in _invalid(SearchConfig, model="tiny", sparsity=0.2, step=0.1, levels=3)


def test_refit_top_and_rescore_top_are_not_both_set() -> None:
    message = _invalid(SearchConfig, model="tiny", refit_top=2, rescore_top=1)
    assert "set refit top or rescore top, not both" in message
    assert _search(refit_top=2).refit_top == 2
    assert _search(rescore_top=2).rescore_top == 2


def test_refit_holdout_needs_the_shipped_refit() -> None:
    assert "set refit top" in _invalid(SearchConfig, model="tiny", refit_holdout=4)
    assert "use 0 or >= 2" in _invalid(SearchConfig, model="tiny", refit_top=1, refit_holdout=1)
    assert _invalid(SearchConfig, model="tiny", refit_top=1, refit_holdout=65).startswith(
        "refit_holdout: "
    )
    assert _search(refit_top=1, refit_holdout=8).refit_holdout == 8


def test_field_rules_name_their_field() -> None:
    assert _invalid(SearchConfig, model="tiny", population=2).startswith("population: ")
    assert _invalid(SearchConfig, model="tiny", rescore_top=-1).startswith("rescore_top: ")
    assert _invalid(SearchConfig, population=8).startswith("model: ")  # required
    assert _invalid(SearchConfig, model="tiny", extra=1).startswith("extra: ")  # no typos
    message = _invalid(SearchConfig, model="tiny", calibration={"n_samples": 0})
    assert message.startswith("calibration.n_samples: ")
    assert "sparsities are only given with an explicit plan" in _invalid(
        PlanConfig, block_sparsity=(0.5,)
    )
    assert "needs one sparsity per block" in _invalid(PlanConfig, kind="explicit")
    with pytest.raises(ValidationError):
        CalibrationConfig(n_samples=0)
    with pytest.raises(ValidationError):
        EvaluationConfig(windows=0)


def test_a_configs_fields_are_frozen_and_keyword_only() -> None:
    config = _search()
    with pytest.raises(ValidationError):
        config.population = 32
    with pytest.raises(TypeError):
        CalibrationConfig("wiki", 8)


def test_a_partial_calibration_keeps_the_searchs_sample_count() -> None:
    assert _search().calibration.n_samples == 16
    assert CalibrationConfig().n_samples == 32  # a prune's default
    partial = SearchConfig.model_validate({"model": "tiny", "calibration": {"seq_len": 128}})
    assert partial.calibration == SearchCalibrationConfig(n_samples=16, seq_len=128)
    given = _search(calibration=CalibrationConfig(n_samples=40))
    assert given.calibration.n_samples == 40
    assert SearchConfig.model_validate(given.model_dump(mode="json")) == given


# -- genomes --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    [
        GENOME,
        GENOME.spec(),
        "f1=sqrt, beta=inv_col_sum",  # keys left out keep Wanda's choice
        GENOME.index,
        GENOME.names(),
        {**GENOME.names(), "index": GENOME.index, "formula": GENOME.formula()},  # a record
    ],
    ids=["genome", "spec", "partial-spec", "index", "names", "record"],
)
def test_a_genome_is_accepted_in_every_form_and_written_as_its_spec(value) -> None:
    search = _search(stages="layerwise", genome=value)
    prune = PruneConfig(method="meta", genome=value)
    for config in (search, prune):
        assert config.genome == GENOME
        dumped = config.model_dump(mode="json")
        assert dumped["genome"] == "f1=sqrt,f2=identity,alpha=one,beta=inv_col_sum"
        assert type(config).model_validate(dumped) == config
        assert type(config).model_validate_json(config.model_dump_json()) == config


def test_genome_defaults_and_refusals() -> None:
    assert _search().genome == WANDA_GENOME
    assert PruneConfig(method="meta").genome == WANDA_GENOME
    assert PruneConfig().genome is None
    assert "only with it" in _invalid(PruneConfig, method="wanda", genome=GENOME.spec())
    assert "bad genome names" in _invalid(PruneConfig, method="meta", genome="f1=cube")
    assert "genome index must be in 0..7202" in _invalid(PruneConfig, method="meta", genome=7203)
    for bad in (True, 1.5, ["sqrt"], {"f1": "sqrt"}):
        assert _invalid(PruneConfig, method="meta", genome=bad).startswith("genome: ")
    schema = SearchConfig.model_json_schema()["properties"]["genome"]
    assert schema["type"] == "string"


# -- command-line flags generated from the models --------------------------------------------
def _leaf_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    paths = []
    for name, info in model.model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            paths += _leaf_paths(sub, f"{prefix}{name}.")
        else:
            paths.append(f"{prefix}{name}")
    return paths


def _parser(model: type[BaseModel] = SearchConfig, **kw) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_config_flags(parser, model, **kw)
    return parser


def _flags(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Generated dest (dotted field path) -> its option strings."""
    return {
        a.dest.removeprefix("config:"): a.option_strings
        for a in parser._actions
        if a.dest.startswith("config:")
    }


def test_every_search_field_has_exactly_one_flag() -> None:
    flags = _flags(_parser())
    assert sorted(flags) == sorted(_leaf_paths(SearchConfig))
    for path, options in flags.items():
        # a yes/no setting has its flag and the flag's --no- form
        bool_field = options[0].startswith("--") and options[1:] == [f"--no-{options[0][2:]}"]
        assert len(options) == 1 or bool_field, path
    assert flags["compare_baselines"] == ["--baselines", "--no-baselines"]
    names = [o for options in flags.values() for o in options]
    assert len(names) == len(set(names))
    assert flags["calibration.n_samples"] == ["--nsamples"]
    assert flags["calibration.seq_len"] == ["--seqlen"]
    assert flags["calibration.seed"] == ["--calib-seed"]
    assert flags["seed"] == ["--seed"]
    assert flags["evaluation.windows"] == ["--eval-windows"]
    assert flags["low_fidelity_samples"] == ["--low-fidelity"]
    assert flags["fitness_samples"] == ["--fitness-samples"]


def _argv(parser: argparse.ArgumentParser, config: BaseModel) -> list[str]:
    """The flags that give `config`, written as a user would."""
    argv = []
    for path, options in _flags(parser).items():
        value = config
        for part in path.split("."):
            value = getattr(value, part)
        if value is None:
            continue
        if isinstance(value, bool):  # a switch: --x when on, --no-x when off
            argv += [options[0] if value else options[1]]
            continue
        if isinstance(value, Genome):
            text = value.spec()
        elif isinstance(value, tuple) and value and isinstance(value[0], Genome):
            text = ";".join(g.spec() for g in value)
        elif isinstance(value, tuple) and value and isinstance(value[0], tuple):
            text = ",".join("layers" if (n, t) == (0, 0) else f"{n}x{t}" for n, t in value)
        elif isinstance(value, tuple):
            text = ",".join(str(v) for v in value)
        else:
            text = str(value)
        argv += [options[0], text]
    return argv


def test_search_flags_round_trip_to_the_same_config() -> None:
    config = SearchConfig(
        model="./some/model",
        sparsity=0.6,
        stages="layerwise",
        population=12,
        generations=3,
        seed=7,
        step=0.1,
        levels=2,
        genome=GENOME,
        low_fidelity_samples=(2, 4),
        metric_space="first_order",
        screen={"rungs": "layers,1x16,4x128", "keep": 0.5},
        seed_genomes=(GENOME, Genome.parse("f2=square,h=rho")),
        promote_fraction=0.25,
        objective="logits_fro",
        fitness_samples=6,
        engine_stats="dense",
        refit_top=2,
        fallback_baselines=False,
        max_evaluations=40.5,
        allocation=AllocationConfig(
            granularity="part",
            levels=3,
            step=0.04,
            selection="nsga3",
            max_moves=5,
            refit=True,
            database="disk",
            memory_gib=2.5,
            front=(0.4, 0.7),
        ),
        batch_size=2,
        dtype="bfloat16",
        calibration=CalibrationConfig(source="calib.txt", n_samples=24, seq_len=64, seed=5),
        evaluation=EvaluationConfig(text="eval.txt", seq_len=128, windows=9, batch_size=3),
    )
    parser = _parser()
    argv = _argv(parser, config)
    # every field was given (the switches, --refit-database, --no-baselines and --no-fallback,
    # alone)
    assert len(argv) == 2 * len(_leaf_paths(SearchConfig)) - 3
    assert "--no-baselines" in argv
    assert config_from_flags(SearchConfig, parser.parse_args(argv)) == config
    # flags left out leave the model's defaults
    args = parser.parse_args(["--model", "m"])
    assert config_body(args) == {"model": "m"}
    assert config_from_flags(SearchConfig, args) == SearchConfig(model="m")


@pytest.mark.parametrize("n", ["16", "24"])
def test_nsamples_lands_in_the_calibration(n) -> None:
    args = _parser().parse_args(["--model", "m", "--nsamples", n])
    assert config_body(args) == {"model": "m", "calibration": {"n_samples": n}}
    config = config_from_flags(SearchConfig, args)
    assert config.calibration == SearchCalibrationConfig(n_samples=int(n))
    assert config.fitness_samples is None


@pytest.mark.parametrize(
    ("argv", "fields", "start"),
    [
        (["--population", "2"], {"population": 2}, "population: "),
        (["--nsamples", "0"], {"calibration": {"n_samples": 0}}, "calibration.n_samples: "),
        (["--pattern", "2-4"], {"pattern": "2-4"}, "pattern: pattern must be"),
        (["--stages", "all"], {"stages": "all"}, "stages: "),
        (["--step", "big"], {"step": "big"}, "step: "),
        (["--pattern", "2:4", "--sparsity", "0.6"], {"pattern": "2:4", "sparsity": 0.6}, "an 2:4"),
    ],
)
def test_a_bad_flag_is_a_config_error_with_the_fields_message(argv, fields, start) -> None:
    args = _parser().parse_args(["--model", "m", *argv])
    with pytest.raises(ConfigError) as info:
        config_from_flags(SearchConfig, args)
    assert str(info.value).startswith(start)
    # the same message as the model (and so the API) gives for the same value
    assert str(info.value) == _invalid(SearchConfig, model="m", **fields)


def test_prune_flags_nest_under_their_prefix_with_aliases() -> None:
    parser = _parser(PruneConfig, prefix="prune.")
    flags = _flags(parser)
    assert flags["prune.plan.block_sparsity"] == ["--block-sparsity", "--layer-sparsity"]
    assert flags["prune.plan.kind"] == ["--plan"]
    args = parser.parse_args(["--plan", "explicit", "--layer-sparsity", "0.25,0.75"])
    config = config_from_flags(PruneConfig, args, "prune.")
    assert config.plan == PlanConfig(kind="explicit", block_sparsity=(0.25, 0.75))
    assert config.sparsity == 0.5  # the plan's mean
    assert config_from_flags(
        PruneConfig, parser.parse_args(["--reconstruct"]), "prune."
    ).reconstruct
    overridden = config_from_flags(PruneConfig, parser.parse_args([]), "prune.", method="ria")
    assert overridden.method == "ria"
    with pytest.raises(ConfigError, match=r"^plan\.block_sparsity: .*comma-separated numbers"):
        config_from_flags(PruneConfig, parser.parse_args(["--layer-sparsity", "a,b"]), "prune.")


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def _lists(text: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


SEARCH_FLAGS = (
    "--nsamples --seqlen --fitness-samples --eval-windows --population --generations --genome "
    "--calib-seed --seed"
)
PRUNE_FLAGS = (
    "--nsamples --seqlen --eval-windows --layer-sparsity --block-sparsity --method --genome "
    "--plan --stats --seed --calib-seed"
)


@pytest.mark.parametrize(("command", "flags"), [("search", SEARCH_FLAGS), ("prune", PRUNE_FLAGS)])
def test_the_commands_keep_the_flag_names_of_the_readme(command, flags, capsys) -> None:
    text = _help(command, capsys)
    missing = [f for f in flags.split() if not _lists(text, f)]
    assert missing == []


def test_prune_seed_is_the_calibration_seed() -> None:
    from optishear.cli import build_parser

    args = build_parser().parse_args(["prune", "--model", "m", "--seed", "3"])
    assert config_from_flags(CalibrationConfig, args, "calibration.").seed == 3
    args = build_parser().parse_args(["search", "--model", "m", "--out", "o", "--seed", "3"])
    config = config_from_flags(SearchConfig, args)
    assert (config.seed, config.calibration.seed) == (3, 0)  # a search's own seed


@pytest.mark.parametrize("text", ["2:0", "0:4", "4:4", "5:4", "1:1"])
def test_an_n_m_pattern_keeps_n_of_every_m_with_0_n_m(text) -> None:
    # 2:0 once read as unstructured: M = 0 is no pattern at all
    with pytest.raises(ConfigError, match="0 < N < M"):
        Pattern.parse(text)
    assert str(Pattern.parse("1:2")) == "1:2"
    assert not Pattern.parse("unstructured").structured
