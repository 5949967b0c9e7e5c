#!/usr/bin/env python3
"""Offline SASS checks for the CUDA kernels: what a kernel change did to the machine code, without a GPU.

  tools/sass_stats.py dump SOURCE.cu OUTDIR [--build DIR] [--arch 90a]
      compiles one translation unit to a cubin (nvcc, the project's include paths and defines), disassembles it
      (cuobjdump: $CUOBJDUMP, else on PATH) and writes one file per kernel, OUTDIR/<mangled name>.s, one instruction
      a line, addresses dropped and anonymous-namespace names normalised, so that two builds compare with cmp/diff.
  tools/sass_stats.py stats OUTDIR [--filter TEXT]
      a line per kernel: instructions, the innermost loop that issues wgmma (HGMMA) or mma (HMMA) and, in it, the
      uniform-datapath instructions (U*, R2UR), MUFU, tensor instructions and local-memory accesses (LDL/STL), the
      kernel's local-memory accesses in all, and the MUFU lead (instructions from the loop's first FMNMX to the first
      MUFU after it: how long a softmax keeps the MUFU unit waiting).
  tools/sass_stats.py diff OUTDIR_A OUTDIR_B
      which kernels' SASS is identical, different, or only on one side.

How it is used (docs/gpu.md): a refactor of a kernel that must not change it is checked by `diff` against the tree
before it (identical SASS needs no device run); a change meant to tighten a tile loop is checked by `stats` (loop
length, uniform work, spills) before a device run measures it. The CUDA toolkit of the development machine has no
cuobjdump; `python3 -m venv /tmp/cudatools && /tmp/cudatools/bin/pip install nvidia-cuda-cuobjdump` provides one
(CUOBJDUMP=$(find /tmp/cudatools -name cuobjdump -type f)).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Addresses in cuobjdump's listing: /*0a30*/ before an instruction, the encoding after it.
_INSTR = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_FUNC = re.compile(r"^\s+Function : (\S+)")
_ANON = re.compile(r"_GLOBAL__N__[0-9a-f_]+")  # the anonymous namespace's per-file hash
_BRANCH = re.compile(r"\bBRA\s+(?:`\(\.L_x_\d+\)\s*)?0x([0-9a-f]+)")
_INSTR_BYTES = 16  # sm_90 instructions are 128 bits


def find_cuobjdump():
    tool = os.environ.get("CUOBJDUMP") or shutil.which("cuobjdump")
    if not tool:
        sys.exit("sass_stats: no cuobjdump (set CUOBJDUMP; see this script's docstring for a pip package with it)")
    return tool


def compile_flags(build, arch):
    flags = ["-I" + ROOT, "-I" + os.path.join(ROOT, "factory", "api"), "-I" + os.path.join(build, "generated"),
             "-DXF_WITH_CUDA=1", "-DNDEBUG", "-O3", "-std=c++17", "--expt-relaxed-constexpr",
             "-gencode", "arch=compute_{0},code=sm_{0}".format(arch)]
    if arch.startswith("90"):
        flags.append("-DXF_BUILD_SM90A=1")
    frontend = os.path.join(ROOT, "third_party", "cudnn_frontend", "include")
    if os.path.isdir(frontend):  # what CMake defines when it builds the cuDNN attention path
        flags += ["-isystem", frontend, "-DXF_HAVE_CUDNN_ATTENTION=1"]
    return flags


def split_kernels(listing):
    """cuobjdump -sass text -> {normalised kernel name: [instruction, ...]} (index i = address / 16)."""
    kernels, name = {}, None
    for line in listing.splitlines():
        m = _FUNC.match(line)
        if m:
            name = _ANON.sub("ANON", m.group(1))
            kernels[name] = []
            continue
        m = _INSTR.match(line)
        if m and name is not None:
            kernels[name].append(_ANON.sub("ANON", m.group(2)))
    return kernels


def opcode(instr):
    parts = instr.split()
    if parts and parts[0].startswith("@"):  # a predicate guard
        parts = parts[1:]
    return parts[0].split(".")[0] if parts else ""


def innermost_tensor_loop(instrs):
    """(first, last) index of the shortest backward branch's range that holds an HGMMA or HMMA, or None."""
    best = None
    for i, ins in enumerate(instrs):
        m = _BRANCH.search(ins)
        if not m:
            continue
        target = int(m.group(1), 16) // _INSTR_BYTES
        if target >= i or not any(opcode(x) in ("HGMMA", "HMMA") for x in instrs[target:i + 1]):
            continue
        if best is None or i - target < best[1] - best[0]:
            best = (target, i)
    return best


def kernel_stats(instrs):
    local = sum(1 for x in instrs if opcode(x) in ("LDL", "STL"))
    loop = innermost_tensor_loop(instrs)
    row = {"instructions": len(instrs), "local": local, "loop": None}
    if loop:
        body = instrs[loop[0]:loop[1] + 1]
        ops = [opcode(x) for x in body]
        row["loop"] = {
            "length": len(body),
            "uniform": sum(1 for o in ops if o.startswith("U") or o == "R2UR"),
            "mufu": ops.count("MUFU"),
            "tensor": sum(1 for o in ops if o in ("HGMMA", "HMMA")),
            "local": sum(1 for o in ops if o in ("LDL", "STL")),
            "mufu_lead": mufu_lead(ops),
        }
    return row


def mufu_lead(ops):
    """Instructions from the loop's first FMNMX (a softmax's row max begins) to the first MUFU after it (its
    exponentials begin), or None without both. The MUFU stream is what an attention softmax waits on (a warp's
    exponentials take 8 cycles each on a scheduler's MUFU unit), so this lead is time the unit sits idle
    (docs/attention.md, open items)."""
    first_max = next((i for i, o in enumerate(ops) if o == "FMNMX"), None)
    if first_max is None:
        return None
    return next((i - first_max for i, o in enumerate(ops) if i > first_max and o == "MUFU"), None)


def read_dir(outdir):
    kernels = {}
    for f in sorted(os.listdir(outdir)):
        if f.endswith(".s"):
            with open(os.path.join(outdir, f)) as fh:
                kernels[f[:-2]] = fh.read().splitlines()
    return kernels


def cmd_dump(args):
    os.makedirs(args.outdir, exist_ok=True)
    cubin = os.path.join(args.outdir, "kernels.cubin")
    nvcc = os.environ.get("NVCC") or shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    build = os.path.abspath(args.build)
    subprocess.run([nvcc] + compile_flags(build, args.arch) + ["-cubin", "-o", cubin, args.source], check=True)
    listing = subprocess.run([find_cuobjdump(), "-sass", cubin], check=True, capture_output=True, text=True).stdout
    kernels = split_kernels(listing)
    for name, instrs in kernels.items():
        with open(os.path.join(args.outdir, name[:200] + ".s"), "w") as fh:
            fh.write("\n".join(instrs) + "\n")
    print("{} kernels -> {}".format(len(kernels), args.outdir))


def cmd_stats(args):
    print("| kernel | instructions | local | tile loop | uniform | MUFU | tensor | local in loop | MUFU lead |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, instrs in read_dir(args.outdir).items():
        if args.filter and args.filter not in name:
            continue
        r = kernel_stats(instrs)
        lp = r["loop"] or {}
        lead = lp.get("mufu_lead")
        print("| {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            name, r["instructions"], r["local"], lp.get("length", "-"), lp.get("uniform", "-"), lp.get("mufu", "-"),
            lp.get("tensor", "-"), lp.get("local", "-"), "-" if lead is None else lead))


def cmd_diff(args):
    a, b = read_dir(args.a), read_dir(args.b)
    same = [k for k in a if k in b and a[k] == b[k]]
    for k in sorted(set(a) | set(b)):
        if k not in b:
            print("only in {}: {}".format(args.a, k))
        elif k not in a:
            print("only in {}: {}".format(args.b, k))
        elif a[k] != b[k]:
            print("differs ({} -> {} instructions): {}".format(len(a[k]), len(b[k]), k))
    print("{} identical, {} kernels in {}, {} in {}".format(len(same), len(a), args.a, len(b), args.b))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("source")
    d.add_argument("outdir")
    d.add_argument("--build", default=os.path.join(ROOT, "build-cuda"), help="a CMake build dir (its generated/)")
    d.add_argument("--arch", default="90a")
    s = sub.add_parser("stats")
    s.add_argument("outdir")
    s.add_argument("--filter", default="")
    f = sub.add_parser("diff")
    f.add_argument("a")
    f.add_argument("b")
    args = ap.parse_args()
    {"dump": cmd_dump, "stats": cmd_stats, "diff": cmd_diff}[args.cmd](args)


if __name__ == "__main__":
    main()
