"""``python -m airflow_provider_fbca.identifiers --markdown`` / ``--update-readme``."""

from __future__ import annotations

from collections.abc import Sequence

from airflow_provider_fbca.identifiers.reference import mapping_reference_markdown, update_readme


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_fbca.identifiers",
        description="Print or regenerate README's mapping reference from the table of match keys.",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--markdown", action="store_true", help="print the mapping reference")
    action.add_argument(
        "--update-readme", metavar="PATH", nargs="?", const="README.md", help="rewrite it in README.md"
    )
    arguments = parser.parse_args(argv)
    if arguments.markdown:
        print(mapping_reference_markdown())
    else:
        changed = update_readme(arguments.update_readme)
        print(f"{arguments.update_readme}: {'updated' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
