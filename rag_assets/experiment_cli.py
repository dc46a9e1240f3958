"""`rag experiment create|list|pause|resume|stop|report|replay`: A/B experiments in the serving database, the
same operations as the admin routes under /v1/admin/experiments. `report` materializes the
`experiment_report` asset (a run in the Dagster UI, a run in MLflow's `ab-tests`); `replay` measures every
arm offline over the eval dataset's judged queries."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields

from rag_core.errors import Refusal
from rag_core.experiment_rule import METRICS, PRIMARY_METRICS, DecisionRule
from rag_core.experiments import PAUSED, RUNNING, STOPPED, Arm, ExperimentStore, new_experiment
from rag_core.querylog import ServingDatabase
from rag_core.settings import Settings

STATUS = {"pause": PAUSED, "resume": RUNNING, "stop": STOPPED}
ARM_FIELDS = {field.name: field.type for field in fields(Arm) if field.name != "name"}
ARM_EXAMPLE = "candidate:share=0.5,collection=rag_chunks__x,mode=dense"


def add_parser(commands: argparse._SubParsersAction) -> None:
    experiment = commands.add_parser("experiment", help="A/B experiments: create, list, pause, resume, stop, report")
    actions = experiment.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="start splitting live traffic between arms (the control first)")
    create.add_argument("name")
    create.add_argument(
        "--arm", action="append", required=True, metavar="NAME:KEY=VALUE,…",
        help=f"an arm, e.g. {ARM_EXAMPLE}; keys: {', '.join(ARM_FIELDS)}",
    )
    create.add_argument("--exclude-tenant", action="append", default=[], help="a tenant that gets no arm")
    create.add_argument("--min-samples", type=int, default=DecisionRule.min_samples, help="per arm, before any verdict")
    create.add_argument("--primary", choices=PRIMARY_METRICS, default=DecisionRule.primary_metric)
    create.add_argument(
        "--guardrail", action="append", choices=list(METRICS), help="may not regress (default: latency p95, degraded)"
    )
    create.add_argument("--control", default="", help="the arm the others are compared with (default: the first)")
    create.add_argument("--alpha", type=float, default=DecisionRule.alpha)
    actions.add_parser("list", help="every experiment, newest first")
    for action in STATUS:
        actions.add_parser(action, help=f"{action} an experiment").add_argument("name")
    report = actions.add_parser("report", help="materialize experiment_report: metrics, intervals, the verdict")
    report.add_argument("name")
    report.add_argument("--no-replay", action="store_true", help="skip the offline replay")
    report.add_argument("--no-promote", action="store_true", help="never move the alias, even when a build ships")
    replay_cmd = actions.add_parser("replay", help="each arm's nDCG@10 over the eval dataset's judged queries")
    replay_cmd.add_argument("name")
    replay_cmd.add_argument("--max-queries", type=int, default=0)


def parse_arm(spec: str) -> Arm:
    """`name:key=value,…` as an Arm; raises ValueError showing the form."""
    name, _, options = spec.partition(":")
    values: dict[str, object] = {}
    for option in filter(None, options.split(",")):
        key, found, value = option.partition("=")
        if not found or key not in ARM_FIELDS:
            raise ValueError(f"arm {spec!r}: {option!r} is not KEY=VALUE with KEY one of {', '.join(ARM_FIELDS)}")
        kind = str(ARM_FIELDS[key])
        values[key] = float(value) if "float" in kind else int(value) if "int" in kind else value
    if "share" not in values:
        raise ValueError(f"arm {spec!r} has no share — write it like {ARM_EXAMPLE}")
    return Arm(name=name, **values)  # type: ignore[arg-type]


@contextmanager
def experiments(settings: Settings) -> Iterator[ExperimentStore]:
    database = ServingDatabase(settings.resolved_serving_db_url)
    try:
        yield ExperimentStore(database.engine)
    finally:
        database.close()


def create(settings: Settings, args: argparse.Namespace) -> dict:
    rule = DecisionRule(
        min_samples=args.min_samples,
        primary_metric=args.primary,
        guardrails=tuple(args.guardrail or DecisionRule.guardrails),
        control=args.control,
        alpha=args.alpha,
    )
    try:
        experiment = new_experiment(args.name, [parse_arm(spec) for spec in args.arm], rule, args.exclude_tenant)
    except ValueError as error:
        raise Refusal(str(error)) from error
    _refuse_missing_builds(settings, [arm.collection for arm in experiment.arms if arm.collection])
    with experiments(settings) as store:
        return store.create(experiment).to_dict()


def _refuse_missing_builds(settings: Settings, collections: list[str]) -> None:
    if not collections:
        return
    from rag_assets.resources import build_resources

    with build_resources(settings)["milvus"].store() as store:
        missing = [collection for collection in collections if not store.has_collection(collection)]
    if missing:
        raise Refusal(f"no build named {', '.join(missing)} — `rag builds` lists the builds an arm can serve")


def report(
    settings: Settings, name: str, replay: bool = True, promote: bool = True, stop_when_decided: bool = False,
    instance=None,
) -> dict:
    """Materialize `experiment_report` for `name` in a run of the Dagster instance; its metadata."""
    from dagster import materialize

    from rag_assets.assets.experiment_report import experiment_report
    from rag_assets.cli import _instance
    from rag_assets.resources import build_resources

    config = {"experiment": name, "replay": replay, "promote": promote, "stop_when_decided": stop_when_decided}
    result = materialize(
        [experiment_report],
        resources=build_resources(settings),
        run_config={"ops": {"experiment_report": {"config": config}}},
        instance=instance or _instance(settings),
        raise_on_error=False,
    )
    if not result.success:
        failure = next((event.event_specific_data.error for event in result.all_events if event.is_failure), None)
        raise Refusal(f"experiment_report failed: {failure.message.strip() if failure else 'see the Dagster run'}")
    (materialization,) = result.asset_materializations_for_node("experiment_report")
    return {key: value.value for key, value in materialization.metadata.items()}


def replay(settings: Settings, name: str, max_queries: int = 0) -> dict[str, float]:
    """Each arm's nDCG@10 offline, recorded on the experiment so the report shows it beside the online result."""
    from rag_assets.assets.experiment_report import replay as replay_arms
    from rag_assets.resources import build_resources

    resources = build_resources(settings)
    with experiments(settings) as store:
        experiment = store.get(name)
        ndcg = replay_arms(resources["milvus"], resources["embedder"], resources["evaluation"], experiment, max_queries)
        store.record_replay(name, ndcg)
    return ndcg


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "create":
        created = create(settings, args)
        print(f"experiment {created['name']} ({created['experiment_id']}) is running:")
        for arm in created["arms"]:
            print(f"  {arm['name']:<16} {arm['share']:>5.0%}  {Arm(**arm).describe()}")
    elif args.action == "list":
        with experiments(settings) as store:
            for experiment in store.list():
                arms = ", ".join(f"{arm.name} {arm.share:.0%}" for arm in experiment.arms)
                print(f"{experiment.name:<24} {experiment.status:<8} {experiment.created_at:%Y-%m-%d %H:%M}  {arms}")
    elif args.action in STATUS:
        with experiments(settings) as store:
            print(f"{args.name}: {store.set_status(args.name, STATUS[args.action]).status}")
    elif args.action == "report":
        found = report(settings, args.name, replay=not args.no_replay, promote=not args.no_promote)
        print(found["report"].split("\n![", 1)[0])  # the markdown without its inlined plot
        print(f"verdict: {found['verdict']} (winner: {found['winner']}); promotion: {found['promotion_gate']}")
        print(f"MLflow run: {found['mlflow_run']}")
    elif args.action == "replay":
        for arm, ndcg in replay(settings, args.name, args.max_queries).items():
            print(f"{arm:<16} nDCG@10 {ndcg:.4f}")
    return 0
