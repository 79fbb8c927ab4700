"""A mix published as a Hub dataset repo (`midtrain publish`): fetch it, rebuild it from its lockfile, compare.

`midtrain data build --from-hub REPO` is `data verify` for a copy on the Hub: the repo holds the card, the
lockfile and every file it lists, so a rebuild from that lockfile must give the same bytes, file for file.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.data import manifest as mf
from pipelines.data.build import BuildResult, VerifyResult, compare_dirs, rebuild
from pipelines.data.hub_access import dataset_hub_errors
from pipelines.errors import BadInput


def download_mix(repo_id: str, revision: str | None = None) -> Path:
    """The dataset repo's files in the local Hub cache (`snapshot_download`), or BadInput saying why not."""
    from huggingface_hub import snapshot_download

    where = f"--from-hub {repo_id}" + (f" (revision {revision})" if revision else "")
    offline = ": not in the local cache, and the Hub cannot be reached (HF_HUB_OFFLINE?)"
    with dataset_hub_errors(where, offline, "cannot download it ({error})"):
        folder = Path(snapshot_download(repo_id, repo_type="dataset", revision=revision))
    if not (folder / mf.MANIFEST).is_file():
        raise BadInput(f"{where}: the repo has no {mf.MANIFEST}: not a mix `midtrain publish` uploaded")
    return folder


def default_out_dir(snapshot: Path) -> Path:
    return Path("runs") / str(mf.read_manifest(snapshot)["recipe"].get("name")) / "data"


def rebuild_from_hub(
    repo_id: str, out_dir: Path | None = None, revision: str | None = None, num_proc: int = 1
) -> tuple[BuildResult, VerifyResult]:
    """Rebuild the published mix into `out_dir` (default `runs/<recipe>/data`) from its lockfile, and compare
    every file with the repo's."""
    snapshot = download_mix(repo_id, revision)
    out_dir = out_dir or default_out_dir(snapshot)
    result = rebuild(snapshot, out_dir, num_proc)
    return result, compare_dirs(snapshot, out_dir)
