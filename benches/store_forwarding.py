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

What it looks at: stack accesses only, in program order within the
function's text, with no account of branches: a load is reported when
it overlaps a store among the WINDOW instructions before it and no
single such store holds all of it. A stack access is `OFF(%rsp)`, or
`OFF(%reg)` where `reg` holds the address of a stack slot: set by
`lea OFF(%rsp),%reg`, copied by `mov`, or chosen between two such by a
`cmov` (then the access may be at either; LLVM picks one of two stack
copies that way, and an IPv6 address read through such a pointer right
after its halves were stored is the stall of session 45). A hazard on
two exclusive paths of a branch is a false report; a hazard through any
other pointer, or across a call, is missed. Read the reported lines in
`objdump -dl` before acting on them.

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


def full_register(reg):
    """The 64-bit register that `reg` (`%eax`, `%r8d`, `%dil`...) is part of."""
    reg = reg.lstrip("%")
    m = re.fullmatch(r"(r\d+)[dwb]?", reg)
    if m:
        return m.group(1)
    m = re.fullmatch(r"[re]?([abcd])[xlh]", reg)
    if m:
        return f"r{m.group(1)}x"
    m = re.fullmatch(r"[re]?(si|di|bp|sp)l?", reg)
    if m:
        return f"r{m.group(1)}"
    return reg


def stack_offsets(address, pointers):
    """The stack offsets a memory operand `D(%reg)` may name, or None."""
    m = re.fullmatch(r"(-?0x[0-9a-f]+|)\((%\w+)\)", address)
    if not m:
        return None
    displacement = int(m.group(1) or "0", 16)
    reg = full_register(m.group(2))
    if reg == "rsp":
        return {displacement}
    if reg in pointers:
        return {base + displacement for base in pointers[reg]}
    return None


def hazards(binary, wanted, window):
    start, size, name = function_range(binary, wanted)
    stores = []  # (instruction number, offset, width)
    pointers = {}  # register -> the stack offsets it may point at
    for n, (address, op, args) in enumerate(instructions(binary, start, size)):
        if op.startswith("call"):
            stores = []
            pointers = {}
            continue
        operands = re.findall(r"(?:[^,(]|\([^)]*\))+", args)
        destination = operands[-1] if operands else ""
        if op.startswith(("cmp", "test", "bt", "push", "j", "nop")):
            destination = ""
        target = full_register(destination) if destination.startswith("%") else None
        source = operands[0] if len(operands) == 2 else ""
        if op.startswith("lea") and target:
            # With no pointers known, only an `OFF(%rsp)` source is a slot.
            pointed = stack_offsets(source, {})
            pointers.pop(target, None)
            if pointed is not None:
                pointers[target] = pointed
            continue
        if op in ("mov", "movq") and target and source.startswith("%"):
            copied = pointers.get(full_register(source))
            pointers.pop(target, None)
            if copied is not None and register_width(source) == 8:
                pointers[target] = copied
            continue
        if op.startswith("cmov") and target and source.startswith("%"):
            chosen = pointers.get(full_register(source))
            kept = pointers.get(target)
            pointers.pop(target, None)
            if chosen is not None and kept is not None:
                pointers[target] = chosen | kept
            continue
        if target and not op.startswith("mov"):
            pointers.pop(target, None)
        if not op.startswith("mov") or len(operands) != 2:
            continue
        stored_at = stack_offsets(destination, pointers)
        if stored_at is not None:
            width = access_width(op, source)
            stores.extend((n, offset, width) for offset in stored_at)
            continue
        if target:
            pointers.pop(target, None)
        loaded_at = stack_offsets(source, pointers)
        if loaded_at is None or not target:
            continue
        width = access_width(op, destination)
        recent = [s for s in stores if n - s[0] <= window]
        for offset in sorted(loaded_at):
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
