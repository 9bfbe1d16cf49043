#!/usr/bin/env python3
"""Cross-check mtseg's geometry against nibabel (and SimpleITK for NRRD/MetaImage).

For every volume given (or every .nii/.nii.gz/.nrrd under the folders given):
  1. `mtseg info --json` must report nibabel's shape and affine (to 1e-5);
  2. `mtseg convert` output must open in nibabel with the same shape, affine and voxels.
NRRD files are compared with SimpleITK's reading converted to RAS.

Usage: scripts/check_with_nibabel.py [--mtseg target/release/mtseg] PATH...
Needs: pip install nibabel numpy (SimpleITK for NRRD). Not part of CI: a developer check.
"""
import argparse, json, pathlib, subprocess, sys, tempfile

import numpy as np
import nibabel as nib


def files_under(paths):
    for p in map(pathlib.Path, paths):
        if p.is_dir():
            for ext in ("*.nii", "*.nii.gz", "*.nrrd", "*.mha", "*.mhd"):
                yield from sorted(p.rglob(ext))
        else:
            yield p


def reference(path):
    name = path.name.lower()
    if name.endswith((".nrrd", ".mha", ".mhd")):
        import SimpleITK as sitk
        img = sitk.ReadImage(str(path))
        d = np.array(img.GetDirection()).reshape(3, 3) * np.array(img.GetSpacing())
        aff = np.eye(4)
        aff[:3, :3] = d
        aff[:3, 3] = img.GetOrigin()
        aff[:2] *= -1  # LPS -> RAS
        data = np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))
        return data.shape, aff, data
    img = nib.load(str(path))
    # Three spatial dimensions, then the volumes of a 4-D file (trailing 1s dropped).
    shape = tuple(img.shape[:3]) + tuple(d for d in img.shape[3:] if d > 1)
    return shape, img.affine, np.asanyarray(img.dataobj)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mtseg", default="target/release/mtseg")
    ap.add_argument("paths", nargs="+")
    args = ap.parse_args()
    failures = 0
    checked = 0
    with tempfile.TemporaryDirectory() as tmp:
        for path in files_under(args.paths):
            shape, affine, data = reference(path)
            info = json.loads(subprocess.run([args.mtseg, "info", "--json", str(path)],
                                             check=True, capture_output=True, text=True).stdout)
            problems = []
            if tuple(info["shape"]) != tuple(shape) + (1,) * max(0, 3 - len(shape)):
                problems.append(f"shape {info['shape']} != {shape}")
            if not np.allclose(np.array(info["affine"]), affine, atol=1e-5):
                problems.append(f"affine differs:\n{np.array(info['affine'])}\n{affine}")
            out = pathlib.Path(tmp) / (path.name.split(".")[0] + "_converted.nii.gz")
            subprocess.run([args.mtseg, "-q", "convert", "--overwrite", str(path), str(out)], check=True)
            converted = nib.load(str(out))
            if not np.allclose(converted.affine, affine, atol=1e-4):
                problems.append(f"converted affine differs:\n{converted.affine}\n{affine}")
            if not np.array_equal(np.asanyarray(converted.dataobj).reshape(data.shape), data):
                if not np.allclose(converted.get_fdata().reshape(data.shape), np.asarray(data, float), atol=1e-4):
                    problems.append("converted voxels differ")
            checked += 1
            status = "ok" if not problems else "FAIL"
            print(f"{status:4} {path}")
            for p in problems:
                print("     " + p)
            failures += bool(problems)
    print(f"{checked} files checked, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
