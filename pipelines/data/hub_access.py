"""Hub errors as user errors: one mapping for every dataset call the data stage makes to the Hub."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pipelines.errors import BadInput


@contextmanager
def dataset_hub_errors(where: str, offline: str, unreachable: str) -> Iterator[None]:
    """Turn a Hub call's failure into BadInput starting with `where`. A gated, missing or unknown-revision repo reads
    the same for every call; what to do offline (`offline`, appended to `where`) or when the Hub cannot be reached
    (`unreachable`, with `{error}` for the exception) depends on what the call was for."""
    from huggingface_hub import constants
    from huggingface_hub import errors as hub_errors

    try:
        yield
    except hub_errors.GatedRepoError:  # before RepositoryNotFoundError, its base class
        raise BadInput(
            f"{where}: the dataset is gated: accept its conditions on the Hub, then `hf auth login` or set HF_TOKEN"
        ) from None
    except hub_errors.RevisionNotFoundError:
        raise BadInput(f"{where}: no such branch, tag or commit in the dataset repo") from None
    except hub_errors.RepositoryNotFoundError:
        raise BadInput(
            f"{where}: dataset repo not found on the Hub ({constants.ENDPOINT}); private or gated datasets need "
            "`hf auth login` or HF_TOKEN"
        ) from None
    except (hub_errors.OfflineModeIsEnabled, hub_errors.LocalEntryNotFoundError):
        raise BadInput(f"{where}{offline}") from None
    except (hub_errors.HTTPError, OSError) as exc:
        raise BadInput(f"{where}: " + unreachable.format(error=f"{type(exc).__name__}: {exc}")) from None
