"""Share a study through a DVC remote: `dmlrepro push` and `dmlrepro pull` (`make push` / `make pull`).

Git carries the code, params.yaml, dvc.lock and the small outputs; the DVC remote carries what
dvc.lock records as cached outputs (prepared datasets, cached features, trained models), each named
by its md5, which is what these commands check against.

Why not plain `dvc push` / `dvc pull`: DVC 3.67 is unclear on the common failures (a missing remote
folder, a partly pushed remote) and silent on a corrupt local cache object. So `dmlrepro pull`
md5-checks the local cache (deleting a corrupt object), fetches what is missing from the default
remote (checked to exist), md5-checks what it fetched, and only then runs `dvc checkout`, checks the
workspace copies and requires a clean `dvc status`: a failure before the checkout leaves the
workspace as it was, and names the files and the fix. `dmlrepro push` requires a clean `dvc status`,
md5-checks the local cache, pushes and checks that the remote holds every object.
The failures in detail, and the steps: docs/sharing.md.
"""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import DmlReproError
from .reporting.provenance import dvc_md5

REMOTE_NAME = "storage"  # what `make remote` names it
SHOWN = 12  # outputs listed in a message before "... and N more"


class SharingError(DmlReproError):
    """A push or pull that cannot go on; the message names the files and the fixing command."""


@dataclass(frozen=True)
class Obj:
    """One object in DVC's cache: a cached file, a directory's listing, or a file inside one."""
    path: str  # workspace path (for a file inside a DVC directory: the directory's path / relpath)
    md5: str   # DVC's hash; a directory listing's ends in ".dir"
    out: str   # the dvc.lock output it belongs to

    def rel(self) -> str:
        return f"files/md5/{self.md5[:2]}/{self.md5[2:]}"


@dataclass
class Remote:
    name: str
    url: str

    @property
    def folder(self) -> Path | None:
        """The remote's folder when it is a local path (or file://), else None."""
        if self.url.startswith("file://"):
            return Path(self.url[len("file://"):])
        return None if "://" in self.url else Path(self.url)


def _dvc(*args: str, root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    try:
        return subprocess.run(["dvc", *args], cwd=root, capture_output=True, text=True, env=env)
    except FileNotFoundError:
        raise SharingError("the `dvc` command is not installed here (pip install dvc, or `make install`)")


def _tail(result: subprocess.CompletedProcess, lines: int = 6) -> str:
    text = (result.stderr.strip() + "\n" + result.stdout.strip()).strip()
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def _listing(lines: list[str]) -> str:
    shown = [f"  {line}" for line in lines[:SHOWN]]
    if len(lines) > SHOWN:
        shown.append(f"  ... and {len(lines) - SHOWN} more")
    return "\n".join(shown)


# ---------------------------------------------------------------------------------------------
# What this commit's dvc.lock needs


def cached_outputs(root: Path) -> list[Obj]:
    """The outputs dvc.lock records that DVC caches (those dvc.yaml marks `cache: false` live in git)."""
    lock, spec = root / "dvc.lock", root / "dvc.yaml"
    if not lock.is_file():
        raise SharingError(f"{lock} does not exist: this commit records no DVC outputs. Build the study "
                           "(`make run`: the Snakefile records the build in dvc.lock) and commit dvc.lock")
    uncached = set()
    stages = (yaml.safe_load(spec.read_text("utf-8")) or {}).get("stages", {}) if spec.is_file() else {}
    for stage in stages.values():
        for key in ("outs", "metrics", "plots"):
            for out in stage.get(key, []) or []:
                if isinstance(out, dict):
                    (path, flags), = out.items()
                    if (flags or {}).get("cache") is False:
                        uncached.add(path)
    locked = (yaml.safe_load(lock.read_text("utf-8")) or {}).get("stages", {})
    return [Obj(out["path"], out["md5"], out["path"]) for stage in locked.values()
            for out in stage.get("outs", []) if "md5" in out and out["path"] not in uncached]


def cache_dir(root: Path) -> Path:
    result = _dvc("cache", "dir", root=root)
    if result.returncode != 0 or not result.stdout.strip():
        raise SharingError(f"not a DVC repository ({root}): `dvc cache dir` failed:\n{_tail(result)}")
    return Path(result.stdout.strip().splitlines()[-1])


def expand(outs: list[Obj], cache: Path) -> tuple[list[Obj], list[Obj]]:
    """(every object the outputs need: files, listings and the files they list; the listings that
    are not in the cache, whose files cannot be known yet)."""
    objects, unlisted = [], []
    for out in outs:
        objects.append(out)
        if not out.md5.endswith(".dir"):
            continue
        listing = cache / out.rel()
        try:
            entries = json.loads(listing.read_text("utf-8"))
        except (OSError, ValueError):
            unlisted.append(out)
            continue
        objects += [Obj(f"{out.path}/{e['relpath']}", e["md5"], out.path) for e in entries]
    return objects, unlisted


def check_cache(objects: list[Obj], cache: Path, drop_corrupt: bool) -> tuple[list[Obj], list[tuple[Obj, str]]]:
    """(objects missing from the cache, (object, md5 found) of corrupt ones). Each object is read
    once; with drop_corrupt a corrupt one is deleted, so that a fetch replaces it."""
    missing, corrupt, seen = [], [], {}
    for obj in objects:
        if obj.md5 not in seen:
            file = cache / obj.rel()
            found = dvc_md5(file) if file.is_file() else None
            if found is not None and found != obj.md5.removesuffix(".dir"):
                if drop_corrupt:
                    file.unlink()
            seen[obj.md5] = found
        found = seen[obj.md5]
        if found is None:
            missing.append(obj)
        elif found != obj.md5.removesuffix(".dir"):
            corrupt.append((obj, found))
    return missing, corrupt


def _by_output(objects: list[Obj]) -> list[str]:
    """One line per output: the file itself, or how many of a directory's files."""
    groups: dict[str, list[Obj]] = {}
    for obj in objects:
        groups.setdefault(obj.out, []).append(obj)
    lines = []
    for out, objs in groups.items():
        if len(objs) == 1 and objs[0].md5.endswith(".dir"):
            lines.append(f"{out}/ (a DVC directory, listing md5 {objs[0].md5})")
        elif len(objs) == 1 and objs[0].path == out:
            lines.append(f"{out} (md5 {objs[0].md5})")
        else:
            lines.append(f"{out}: {len(objs)} file(s), e.g. {objs[0].path} (md5 {objs[0].md5})")
    return lines


# ---------------------------------------------------------------------------------------------
# The remote


def get_remote(root: Path, name: str | None = None) -> Remote:
    """The named DVC remote, or the default one."""
    if name is None:
        result = _dvc("remote", "default", root=root)
        name = result.stdout.strip() if result.returncode == 0 else ""
    if not name:
        raise SharingError("no default DVC remote is configured. Fix: `make remote` (the folder "
                           "../dmlrepro-remote) or `make remote REMOTE=<url>` (s3://..., ssh://..., a path), "
                           f"i.e. `dvc remote add --default {REMOTE_NAME} <url>`")
    url = _dvc("config", f"remote.{name}.url", root=root).stdout.strip()
    if not url:
        raise SharingError(f"the DVC remote {name!r} is not configured or has no url. Fix: `make remote REMOTE=<url>` "
                           f"or `dvc remote modify {name} url <url>`")
    return Remote(name, url)


def _fix_url(remote: Remote) -> str:
    return (f"`dvc remote modify --local {remote.name} url <the right place>` (this clone only) or "
            f"`make remote REMOTE=<url>` (everyone: commit .dvc/config)")


def _check_folder(remote: Remote, pushing: bool) -> None:
    folder = remote.folder
    if folder is not None and not folder.is_dir():
        also = ("create it with `make remote`" if pushing else
                "or, if nothing was pushed yet, run `make push` in the workspace that built the study")
        raise SharingError(f"the DVC remote {remote.name!r} is the folder {folder}, which does not exist "
                           f"(not mounted, mistyped, or never pushed to). Fix: {_fix_url(remote)}; {also}")


# ---------------------------------------------------------------------------------------------
# pull


def _workspace_mismatches(objects: list[Obj], cache: Path, root: Path) -> list[Obj]:
    """Files of the workspace whose bytes are not those dvc.lock records (read unless hard-linked
    to the verified cache object)."""
    bad = []
    for obj in objects:
        if obj.md5.endswith(".dir"):
            continue
        path = root / obj.path
        try:
            if os.path.samefile(path, cache / obj.rel()):
                continue
        except OSError:
            pass
        if not path.is_file() or dvc_md5(path) != obj.md5:
            bad.append(obj)
    return bad


def _corrupt_remote(remote: Remote, corrupt: list[tuple[Obj, str]], what: str) -> SharingError:
    where = f"{remote.folder / corrupt[0][0].rel()}" if remote.folder else "its object on the remote"
    return SharingError(
        f"the remote's copy of {len(corrupt)} file(s) is corrupt (its bytes do not have the md5 dvc.lock "
        f"records). {what}\n" + _listing([f"{o.path}: md5 {found}, expected {o.md5}" for o, found in corrupt])
        + f"\nFix: in a workspace that holds a good copy, delete {where} (`dvc push` does not replace an object "
          "the remote already has), run `make push` there, then `make pull` here")


def _check_remote_copies(outs: list[Obj], cache: Path, remote: Remote) -> None:
    """md5-check the folder remote's copies of the objects the local cache lacks."""
    objects, _ = expand(outs, remote.folder)  # directory listings as the remote has them
    wanted = [o for o in objects if not (cache / o.rel()).is_file() and (remote.folder / o.rel()).is_file()]
    _, corrupt = check_cache(wanted, remote.folder, drop_corrupt=False)
    if corrupt:
        raise _corrupt_remote(remote, corrupt, "Nothing was fetched or checked out.")


def pull(root: Path = Path("."), remote_name: str | None = None, log=print) -> dict:
    """Bring this commit's cached outputs into the workspace (from the default remote, or the one
    named); see the module's docstring."""
    root = Path(root)
    outs = cached_outputs(root)
    cache = cache_dir(root)
    objects, unlisted = expand(outs, cache)
    missing, corrupt = check_cache(objects, cache, drop_corrupt=True)
    for obj, found in corrupt:
        log(f"the local cache copy of {obj.path} was corrupt (md5 {found}, expected {obj.md5}): deleted, "
            "fetching it again")
    fetched = 0
    if missing or corrupt or unlisted:
        remote = get_remote(root, remote_name)
        _check_folder(remote, pushing=False)
        if remote.folder is not None:  # `dvc fetch` deletes a corrupt object from a folder remote, silently
            _check_remote_copies(outs, cache, remote)
        log(f"fetching from DVC remote {remote.name!r} ({remote.url}) ...")
        had = {o.md5 for o in objects} - {o.md5 for o in missing} - {o.md5 for o, _ in corrupt}
        result = _dvc("fetch", "--remote", remote.name, root=root)
        objects, unlisted = expand(outs, cache)
        still_missing, corrupt = check_cache(objects, cache, drop_corrupt=True)
        fetched = len({o.md5 for o in objects} - had - {o.md5 for o in still_missing} - {o.md5 for o, _ in corrupt})
        if result.returncode != 0 and fetched == 0 and remote.folder is None:
            raise SharingError(
                f"could not fetch from the DVC remote {remote.name!r} ({remote.url}): unreachable, a wrong URL, "
                f"missing credentials, or the `dvc[...]` extra for it is not installed. Nothing was checked out.\n"
                f"`dvc fetch` said:\n{_tail(result)}\nFix: check the URL and credentials ({_fix_url(remote)}; "
                f"`dvc remote modify --local {remote.name} <option> <value>` for secrets), then `make pull`")
        if corrupt:
            raise _corrupt_remote(remote, corrupt, "Removed from the local cache; nothing was checked out.")
        if still_missing or unlisted:
            lost = still_missing + [u for u in unlisted if u not in still_missing]
            said = f"\n`dvc fetch` said:\n{_tail(result)}" if result.returncode != 0 else ""
            why = ("a push that did not finish, one made before the last build was recorded, or a copy DVC found "
                   "corrupt and deleted")
            if fetched == 0 and remote.folder is None:  # DVC reports an unreachable server as missing files
                why = "the remote is unreachable (network, URL or credentials), or nothing of this commit was pushed"
            raise SharingError(
                f"the DVC remote {remote.name!r} ({remote.url}) did not provide {len(lost)} file(s) this commit's "
                f"dvc.lock records: {why}. Nothing was checked out.\n" + _listing(_by_output(lost))
                + f"\nFix: run `make push` (dmlrepro push) in the workspace that built this commit, then "
                  f"`make pull` here; or check the remote's URL: {_fix_url(remote)}" + said)
    # every object is present and intact: only now is the workspace touched
    result = _dvc("checkout", root=root)
    if result.returncode != 0:
        raise SharingError(f"`dvc checkout` failed; rerun `make pull` once the cause is fixed:\n{_tail(result)}")
    bad = _workspace_mismatches(objects, cache, root)
    if bad:  # a copy DVC believes is current (e.g. one checked out earlier from a corrupt cache)
        for obj in bad:
            (root / obj.path).unlink(missing_ok=True)
        result = _dvc("checkout", *sorted({o.out for o in bad}), root=root)
        if _workspace_mismatches(bad, cache, root):
            raise SharingError("these workspace files differ from dvc.lock even after `dvc checkout`:\n"
                               + _listing(_by_output(bad)) + f"\n{_tail(result)}\nFix: `dvc checkout --relink`")
        log(f"replaced {len(bad)} workspace file(s) that did not match dvc.lock: "
            + ", ".join(sorted({o.out for o in bad})))
    status = _dvc("status", "--json", root=root)
    changed = json.loads(status.stdout or "{}") if status.returncode == 0 else None
    if changed:
        raise SharingError("the workspace does not match dvc.lock after the checkout (edited params.yaml or "
                           "code?):\n" + _listing(sorted(changed)) + "\nSee `dvc status`; `git status` shows "
                           "the edits; `git stash` or commit them, then `make pull`")
    files = [o for o in objects if not o.md5.endswith(".dir")]
    summary = {"outputs": len(outs), "files": len(files), "fetched": fetched,
               "bytes": sum((root / o.path).stat().st_size for o in files)}
    log(f"{summary['outputs']} DVC outputs ({summary['files']} files, {summary['bytes'] / 1e6:.1f} MB) match "
        f"dvc.lock, {fetched} object(s) fetched; `dvc status` is clean. For Snakemake, mark them up to date: "
        "`snakemake --touch --forceall --cores 1` (make pull does)")
    return summary


# ---------------------------------------------------------------------------------------------
# push


def _remote_lacks(remote: Remote, objects: list[Obj], cache: Path, root: Path) -> list[Obj]:
    if remote.folder is not None:
        lacking = []
        for obj in objects:
            there = remote.folder / obj.rel()
            if not there.is_file() or there.stat().st_size != (cache / obj.rel()).stat().st_size:
                lacking.append(obj)
        return lacking
    result = _dvc("status", "--cloud", "--remote", remote.name, "--json", root=root)
    if result.returncode != 0:
        raise SharingError(f"could not compare with the DVC remote {remote.name!r} ({remote.url}):\n{_tail(result)}")
    state = json.loads(result.stdout or "{}")
    return [o for o in objects if o.out in state]


def push(root: Path = Path("."), remote_name: str | None = None, log=print) -> dict:
    """Upload the cached outputs this commit's dvc.lock records (to the default remote, or the one
    named); see the module's docstring."""
    root = Path(root)
    outs = cached_outputs(root)
    # the cache first: a corrupt cache object also makes `dvc status` report its workspace file as
    # changed, and only this check can name the object's file
    cache = cache_dir(root)
    objects, unlisted = expand(outs, cache)
    missing, corrupt = check_cache(objects, cache, drop_corrupt=True)
    if missing or corrupt or unlisted:
        lines = _by_output(missing + unlisted) + [
            f"{o.path}: its cache object {cache / o.rel()} is corrupt (md5 {found}, expected "
            f"{o.md5.removesuffix('.dir')}; truncated or overwritten), deleted" for o, found in corrupt]
        raise SharingError("the local DVC cache lacks what dvc.lock records, so it cannot be pushed:\n"
                           + _listing(lines) + "\nFix: `dvc commit --force` stores the workspace files again "
                           "(if they are intact; else rebuild them: `make run`), then `make push`")
    status = _dvc("status", "--json", root=root)
    if status.returncode != 0:
        raise SharingError(f"`dvc status` failed:\n{_tail(status)}")
    changed = json.loads(status.stdout or "{}")
    if changed:
        raise SharingError("dvc.lock does not describe the workspace, so teammates would get other files than "
                           "yours:\n" + _listing(sorted(changed)) + "\nFix: record the build with "
                           "`dmlrepro dvc-commit` (after a Snakemake build; `dvc repro` records its own), "
                           "then `make push`")
    remote = get_remote(root, remote_name)
    _check_folder(remote, pushing=True)
    log(f"pushing to DVC remote {remote.name!r} ({remote.url}) ...")
    result = _dvc("push", "--remote", remote.name, root=root)
    lacking = _remote_lacks(remote, objects, cache, root)
    if result.returncode != 0 or lacking:
        raise SharingError(f"the push did not finish: the remote {remote.name!r} ({remote.url}) still lacks "
                           f"{len(lacking)} file(s):\n" + _listing(_by_output(lacking))
                           + f"\n`dvc push` said:\n{_tail(result)}\nFix: rerun `make push` (it sends only "
                             "what is missing)")
    files = {o.md5: o for o in objects}
    summary = {"outputs": len(outs), "objects": len(files),
               "bytes": sum((cache / o.rel()).stat().st_size for o in files.values())}
    log(f"the remote holds all {summary['objects']} objects ({summary['bytes'] / 1e6:.1f} MB) of "
        f"{summary['outputs']} DVC outputs of this commit's dvc.lock")
    git = subprocess.run(["git", "status", "--porcelain", "--", "dvc.lock", "dvc.yaml", "params.yaml", "results"],
                         cwd=root, capture_output=True, text=True)
    if git.returncode == 0 and git.stdout.strip():
        log("note: dvc.lock or the results are not committed; teammates get the files of the commit they "
            "check out: `git add dvc.lock dvc.yaml params.yaml results && git commit && git push`")
    return summary
