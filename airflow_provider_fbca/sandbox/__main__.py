"""``python -m airflow_provider_fbca.sandbox``: serve the sandbox until interrupted.

The first line of stdout is the base URL (``http://127.0.0.1:PORT``), flushed at once, so a parent
process can read it and go. The defaults are Meta's as a new app meets them: sessions take 10 s to
process, the app has development access (ad-account score of 60), and removals that would leave fewer
than 1,000 matched people are refused; tests and the demo choose their own.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import signal
import sys
import threading
from types import FrameType

from airflow_provider_fbca.sandbox.persistence import StateFileError
from airflow_provider_fbca.sandbox.ratelimit import DEVELOPMENT_ACCESS, SCORE_TIERS
from airflow_provider_fbca.sandbox.server import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_AD_ACCOUNT_ID,
    DEFAULT_APP_ID,
    DEFAULT_APP_SECRET,
    DEFAULT_POPULATION,
    DEFAULT_SEED,
    Sandbox,
)
from airflow_provider_fbca.sandbox.transport import DEFAULT_READ_TIMEOUT_S

DEFAULT_CLI_PROCESSING_DELAY_S = 10.0
DEFAULT_CLI_REMOVAL_FLOOR = 1000
# An upload decodes one list per row, 10,000 a request, alive until the answer: at the default threshold
# (700 new objects) the collector runs some 15 times a request and walks the rows again as they age into
# older generations. The sandbox makes few reference cycles, so its process collects less often.
GC_YOUNG_THRESHOLD = 50_000


def build_parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_fbca.sandbox",
        description="Serve a local Marketing API sandbox (customer-file Custom Audiences).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default)")
    parser.add_argument("--access-token", default=DEFAULT_ACCESS_TOKEN, help="the token the sandbox accepts")
    parser.add_argument("--app-id", default=DEFAULT_APP_ID, help="the app id")
    parser.add_argument(
        "--app-secret", default=DEFAULT_APP_SECRET, help='the app secret ("" turns appsecret_proof off)'
    )
    parser.add_argument("--ad-account-id", default=DEFAULT_AD_ACCOUNT_ID, help="the ad account, act_<digits>")
    parser.add_argument("--population", type=int, default=DEFAULT_POPULATION, help="people to match against")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="the population's seed")
    parser.add_argument(
        "--processing-delay",
        type=_seconds,
        default=DEFAULT_CLI_PROCESSING_DELAY_S,
        help=f"seconds a closed session stays processing (default: {DEFAULT_CLI_PROCESSING_DELAY_S:g})",
    )
    parser.add_argument("--state-file", default=None, help="JSON file that keeps the state across restarts")
    parser.add_argument("--rate-limit-budget", type=int, default=None, help="calls per ad account and hour")
    parser.add_argument(
        "--access-tier",
        choices=[*SCORE_TIERS, "off"],
        default=DEVELOPMENT_ACCESS,
        help="the app's Marketing API tier, for the ad-account score (default: development_access)",
    )
    parser.add_argument(
        "--removal-floor",
        type=int,
        default=DEFAULT_CLI_REMOVAL_FLOOR,
        help="refuse removals leaving fewer matched people (default: 1000; 0: never)",
    )
    parser.add_argument(
        "--read-timeout",
        type=_seconds,
        default=DEFAULT_READ_TIMEOUT_S,
        help=f"seconds a silent connection is kept (default: {DEFAULT_READ_TIMEOUT_S:g})",
    )
    return parser


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError("must be a finite number of seconds >= 0")
    return value


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: list[str] | None = None) -> int:
    """
    Run the sandbox until SIGINT or SIGTERM; save the state file on the way out.

    :param argv: the arguments (default: ``sys.argv[1:]``).
    """
    args = build_parser().parse_args(argv)
    try:
        sandbox = _sandbox(args)
    except (StateFileError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.rate_limit_budget is not None:
        sandbox.set_rate_limit(args.rate_limit_budget)
    if not _is_loopback(args.host):
        print(
            f"warning: serving on {args.host}, beyond loopback, with well-known credentials", file=sys.stderr
        )
    stopping = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    # Before the URL is out: a caller may stop the sandbox as soon as it reads it, and a SIGTERM met by
    # the default handler would end the process without saving the state file.
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    tune_collector()
    sandbox.start()
    print(sandbox.url, flush=True)
    while not stopping.wait(0.5):
        pass
    sandbox.stop()
    return 0


def tune_collector() -> None:
    """Collect young objects every :data:`GC_YOUNG_THRESHOLD` allocations, and leave what exists now (modules,
    the loaded state) out of later full collections: the sandbox's own process only, never a host's."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _sandbox(args: argparse.Namespace) -> Sandbox:
    return Sandbox(
        host=args.host,
        port=args.port,
        access_token=args.access_token,
        app_id=args.app_id,
        app_secret=args.app_secret or None,
        ad_account_id=args.ad_account_id,
        population=args.population,
        seed=args.seed,
        processing_delay_s=args.processing_delay,
        state_file=args.state_file,
        access_tier=None if args.access_tier == "off" else args.access_tier,
        removal_floor=args.removal_floor,
        read_timeout_s=args.read_timeout,
    )


if __name__ == "__main__":
    sys.exit(main())
