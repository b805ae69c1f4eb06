#!/usr/bin/env python3
"""Store-forwarding hazards in a function of a binary, found statically.

A load that reads bytes of several recent stores, or more bytes than the
one store it overlaps, cannot take its data from the store buffer: it
waits until those stores reach the cache (a dozen cycles and more on
this VM's CPUs). The packet path met this three times (benches/RESULTS.md,
sessions 16, 17 and 21): a flow key copied with 8- and 16-byte loads
right after its fields were stored one by one, an IPv6 address stored in
four 32-bit pieces and read back in two 8-byte ones. Such stalls change
no instruction count (benches/icount.sh does not see them) and move with
the compiler's stack layout, so check the hot functions with this after
changes to them, beside the criterion figures.

What it looks at: stack accesses (`OFF(%rsp)`) only, in program order
within the function's text, with no account of branches: a load is
reported when it overlaps a store among the WINDOW instructions before
it and no single such store holds all of it. A hazard on two exclusive
paths of a branch is a false report; a hazard through another pointer
than the stack pointer, or across a call, is missed. Read the reported
lines in `objdump -dl` before acting on them.

Usage: benches/store_forwarding.py BINARY SYMBOL|ADDRESS [WINDOW]
  SYMBOL is a demangled name as `nm -C` prints it (the first function of
  that name; generic functions share names, so give the ADDRESS from
  `nm -C -S` to pick one); WINDOW defaults to 40 instructions.
Example: benches/store_forwarding.py target/release/cipgw \\
           'cipgw_datapath::pipeline::Pipeline::process'
Exits 1 when it reports a hazard, 0 when it finds none, 64 on a wrong
command line and 66 when the binary has no such function.
"""

import re
import subprocess
import sys

USAGE = "usage: " + __doc__.split("Usage: ", 1)[1].split("\n\n", 1)[0]

WIDTH_SUFFIX = {"b": 1, "w": 2, "l": 4, "q": 8}
BYTE_REGS = {"al", "bl", "cl", "dl", "sil", "dil", "bpl", "spl"}
WORD_REGS = {"ax", "bx", "cx", "dx", "si", "di", "bp", "sp"}


def register_width(reg):
    reg = reg.lstrip("%")
    if reg.startswith("xmm"):
        return 16
    if reg.startswith("ymm"):
        return 32
    if reg in BYTE_REGS or re.fullmatch(r"r\d+b", reg):
        return 1
    if reg in WORD_REGS or re.fullmatch(r"r\d+w", reg):
        return 2
    if reg.startswith("e") or re.fullmatch(r"r\d+d", reg):
        return 4
    return 8


def access_width(op, reg):
    """Bytes moved by a mov-family instruction with register operand `reg`."""
    if op in ("movb", "movw", "movl", "movq") and not reg.startswith("%xmm"):
        return WIDTH_SUFFIX[op[-1]]
    if op.startswith(("movz", "movs")) and len(op) > 4 and op[4] in "bw":
        return 1 if op[4] == "b" else 2
    if op in ("movq", "movd") and reg.startswith("%xmm"):
        return 8 if op == "movq" else 4
    if op in ("movhps", "movlps", "movhpd", "movlpd", "movsd"):
        return 8
    if op == "movss":
        return 4
    return register_width(reg) if reg.startswith("%") else 8


def as_address(text):
    """`text` as a hexadecimal address (with or without 0x), or None."""
    try:
        return int(text, 16)
    except ValueError:
        return None


def function_range(binary, wanted):
    wanted_address = as_address(wanted)
    symbols = subprocess.run(
        ["nm", "-C", "-S", binary], capture_output=True, text=True, check=True
    ).stdout
    for line in symbols.splitlines():
        parts = line.split(None, 3)
        if len(parts) < 4:
            continue
        address, size, _, name = parts
        if name == wanted or int(address, 16) == wanted_address:
            return int(address, 16), int(size, 16), name
    print(f"store_forwarding.py: no function {wanted!r} in {binary}", file=sys.stderr)
    sys.exit(66)


def instructions(binary, start, size):
    text = subprocess.run(
        [
            "objdump", "-d", "--no-show-raw-insn", "-M", "att",
            f"--start-address={start}", f"--stop-address={start + size}", binary,
        ],
        capture_output=True, text=True, check=True,
    ).stdout
    for line in text.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\s+(\S+)\s*(.*)", line)
        if m:
            yield m.groups()


def hazards(binary, wanted, window):
    start, size, name = function_range(binary, wanted)
    stores = []  # (instruction number, offset, width)
    for n, (address, op, args) in enumerate(instructions(binary, start, size)):
        if op.startswith("call"):
            stores = []
            continue
        if not op.startswith("mov"):
            continue
        store = re.fullmatch(r"(\S+),(-?0x[0-9a-f]+|)\(%rsp\)", args)
        if store:
            offset = int(store.group(2) or "0", 16)
            stores.append((n, offset, access_width(op, store.group(1))))
            continue
        load = re.fullmatch(r"(-?0x[0-9a-f]+|)\(%rsp\),(%\w+)", args)
        if not load:
            continue
        offset = int(load.group(1) or "0", 16)
        width = access_width(op, load.group(2))
        recent = [s for s in stores if n - s[0] <= window]
        overlapping = [s for s in recent if s[1] < offset + width and offset < s[1] + s[2]]
        if overlapping and not any(
            s[1] <= offset and offset + width <= s[1] + s[2] for s in overlapping
        ):
            spans = ", ".join(f"{s[2]} bytes at {s[1]:#x}" for s in overlapping)
            yield f"{address}: {op} {args}: {width} bytes at {offset:#x} over stores of {spans}"
    print(f"{name} at {start:#x}, {size} bytes", file=sys.stderr)


def main():
    if len(sys.argv) not in (3, 4):
        print(USAGE, file=sys.stderr)
        sys.exit(64)
    window = int(sys.argv[3]) if len(sys.argv) == 4 else 40
    found = list(hazards(sys.argv[1], sys.argv[2], window))
    for line in found:
        print(line)
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
