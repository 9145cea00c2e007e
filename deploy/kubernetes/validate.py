#!/usr/bin/env python3
"""Checks deploy/kubernetes against the Kubernetes API schemas, offline.

Every kustomization (base and each overlay) must name files and directories that exist.
With `kubectl` on the PATH, each kustomization is rendered (`kubectl kustomize`) and every
document of the result is validated; without it, every resource file is validated as it
is and every patch must name an object of the base. Validation is strict (unknown fields
are errors) against KUBERNETES_VERSION, with the schemas bundled in the
`kubernetes-validate` package (pip install kubernetes-validate): no network.

    python3 deploy/kubernetes/validate.py [--kubernetes-version 1.32.0] [--no-render]
"""

import argparse
import pathlib
import shutil
import subprocess
import sys

import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.32.0"
ROOT = pathlib.Path(__file__).resolve().parent


def kustomizations():
    return sorted(p.parent for p in ROOT.rglob("kustomization.yaml"))


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def check_references(kdir, errors):
    """The files and directories a kustomization names exist; returns its resource files
    and its patch files."""
    k = load(kdir / "kustomization.yaml")[0]
    files, patches = [], []
    for entry in k.get("resources", []):
        target = kdir / entry
        if target.is_dir():
            if not (target / "kustomization.yaml").is_file():
                errors.append(f"{kdir}: resource {entry} is a directory without kustomization.yaml")
        elif target.is_file():
            files.append(target)
        else:
            errors.append(f"{kdir}: resource {entry} does not exist")
    for patch in k.get("patches", []):
        if "path" in patch:
            target = kdir / patch["path"]
            if target.is_file():
                patches.append(target)
            else:
                errors.append(f"{kdir}: patch {patch['path']} does not exist")
    for gen in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
        for entry in gen.get("files", []):
            name = entry.split("=", 1)[-1]
            if not (kdir / name).is_file():
                errors.append(f"{kdir}: generator {gen['name']} names missing file {name}")
    return files, patches


def validate_docs(docs, where, version, errors):
    count = 0
    for doc in docs:
        count += 1
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{where}: {name}: {e.message} (at {'.'.join(map(str, e.path))})")
        except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
            errors.append(f"{where}: {name}: no schema: {e}")
    return count


def objects(path):
    return {(d["kind"], d["metadata"]["name"]) for d in load(path)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-version", default=KUBERNETES_VERSION)
    parser.add_argument("--no-render", action="store_true", help="validate files, never kubectl kustomize")
    args = parser.parse_args()
    kubectl = None if args.no_render else shutil.which("kubectl")
    errors = []
    known = set()
    for kdir in kustomizations():
        files, _ = check_references(kdir, errors)
        for f in files:
            known |= objects(f)
    for kdir in kustomizations():
        rel = kdir.relative_to(ROOT)
        files, patches = check_references(kdir, [])
        if kubectl:
            out = subprocess.run([kubectl, "kustomize", str(kdir)], capture_output=True, text=True)
            if out.returncode != 0:
                errors.append(f"{rel}: kubectl kustomize failed: {out.stderr.strip()}")
                continue
            n = validate_docs([d for d in yaml.safe_load_all(out.stdout) if d], f"{rel} (rendered)", args.kubernetes_version, errors)
        else:
            n = sum(validate_docs(load(f), str(f.relative_to(ROOT)), args.kubernetes_version, errors) for f in files)
            for p in patches:
                for kind_name in objects(p) - known:
                    errors.append(f"{p.relative_to(ROOT)}: patches {kind_name[0]}/{kind_name[1]}, which no manifest defines")
        print(f"{rel}: {n} documents valid against Kubernetes {args.kubernetes_version}" + (" (rendered)" if kubectl else ""))
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
