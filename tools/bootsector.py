"""A hand-assembled 512-byte x86 boot sector that reports on COM1, for booting a VM from a LUN.

The BIOS (SeaBIOS under QEMU) reads LBA 0 of the boot disk to 0000:7C00 and jumps there with DL =
the boot drive. This sector, in 16-bit real mode:

1. prints ``VMBLOCK-BOOT-OK`` on COM1 (I/O port 0x3F8), which proves the BIOS read LBA 0 through
   the disk it was given;
2. reads one more sector, at ``stage2_lba``, with the BIOS's EDD read (INT 13h AH=42h) to
   0000:7E00 and prints the NUL-terminated string found there (the test writes
   ``VMBLOCK-LBA-OK`` at that LBA first), which proves a second read at an arbitrary, far LBA;
   on a BIOS error it prints ``VMBLOCK-DISK-ERR`` instead;
3. halts forever (``hlt`` in a loop; with ``-no-reboot`` QEMU would exit on a triple fault).

No assembler is needed: the program below is a list of instructions with their machine code
written out by hand and the equivalent assembly in a comment. A tiny two-pass "linker"
resolves labels: pass 1 lays out offsets, pass 2 fills in rel8/rel16 jump displacements and
absolute 16-bit addresses (the code is linked at 0x7C00, with CS = DS = ES = SS = 0).

Run as a script to write the sector to a file: ``python tools/bootsector.py OUT [STAGE2_LBA]``.
"""

from __future__ import annotations

import struct
import sys

BOOT_MARKER = "VMBLOCK-BOOT-OK"
STAGE2_MARKER = "VMBLOCK-LBA-OK"
DISK_ERROR_MARKER = "VMBLOCK-DISK-ERR"
SECTOR = 512
ORIGIN = 0x7C00         # where the BIOS loads the boot sector
STAGE2_BUFFER = 0x7E00  # right after it; 0000:7E00 is free conventional memory
COM1 = 0x3F8            # 16550 UART: +0 THR/DLL, +1 IER/DLM, +3 LCR, +5 LSR
LSR_THRE = 0x20         # line status: transmit holding register empty


# Instruction forms: raw bytes, a label definition, or an opcode with a label operand.
def op(code: bytes, asm: str) -> tuple:
    return ("bytes", code, asm)


def label(name: str) -> tuple:
    return ("label", name)


def rel8(opcode: int, target: str, asm: str) -> tuple:
    """Short jump (JMP/Jcc): opcode, then a signed 8-bit displacement from the next instruction."""
    return ("rel8", opcode, target, asm)


def rel16(opcode: int, target: str, asm: str) -> tuple:
    """Near CALL/JMP: opcode, then a signed 16-bit displacement from the next instruction."""
    return ("rel16", opcode, target, asm)


def imm16(prefix: bytes, target: str, asm: str) -> tuple:
    """An instruction ending in the absolute 16-bit address of a label (e.g. MOV SI, imm16)."""
    return ("imm16", prefix, target, asm)


def program(stage2_lba: int) -> list[tuple]:
    return [
        label("start"),
        op(b"\xFA", "cli                  ; no interrupts while the stack moves"),
        op(b"\x31\xC0", "xor ax, ax"),
        op(b"\x8E\xD8", "mov ds, ax           ; DS = 0 (data addresses are linked at 0x7C00)"),
        op(b"\x8E\xC0", "mov es, ax           ; ES = 0 (EDD buffer segment below)"),
        op(b"\x8E\xD0", "mov ss, ax           ; SS = 0"),
        op(b"\xBC" + struct.pack("<H", ORIGIN), "mov sp, 0x7C00       ; stack grows down below us"),
        op(b"\x89\xD5", "mov bp, dx           ; keep DL = boot drive from the BIOS"),
        op(b"\xFB", "sti                  ; the BIOS disk driver may wait on interrupts"),
        op(b"\xFC", "cld                  ; lodsb counts up"),
        # 16550 set-up: 115200 8N1, no UART interrupts. QEMU's UART transmits whatever is
        # written to THR, but a real one needs this, so do it properly.
        op(b"\xBA" + struct.pack("<H", COM1 + 1), "mov dx, 0x3F9        ; IER"),
        op(b"\xB0\x00", "mov al, 0"),
        op(b"\xEE", "out dx, al           ; IER = 0: no UART interrupts"),
        op(b"\xBA" + struct.pack("<H", COM1 + 3), "mov dx, 0x3FB        ; LCR"),
        op(b"\xB0\x80", "mov al, 0x80"),
        op(b"\xEE", "out dx, al           ; LCR.DLAB = 1: ports 0/1 are the divisor"),
        op(b"\xBA" + struct.pack("<H", COM1 + 0), "mov dx, 0x3F8        ; DLL"),
        op(b"\xB0\x01", "mov al, 1"),
        op(b"\xEE", "out dx, al           ; divisor low = 1 (115200 baud)"),
        op(b"\xBA" + struct.pack("<H", COM1 + 1), "mov dx, 0x3F9        ; DLM"),
        op(b"\xB0\x00", "mov al, 0"),
        op(b"\xEE", "out dx, al           ; divisor high = 0"),
        op(b"\xBA" + struct.pack("<H", COM1 + 3), "mov dx, 0x3FB        ; LCR"),
        op(b"\xB0\x03", "mov al, 3"),
        op(b"\xEE", "out dx, al           ; 8 data bits, no parity, 1 stop; DLAB = 0"),
        # 1. The boot marker: this sector's own bytes, so it is what the BIOS read from LBA 0.
        imm16(b"\xBE", "msg_boot", "mov si, msg_boot"),
        rel16(0xE8, "print", "call print"),
        # 2. EDD read of one sector at stage2_lba into 0000:7E00 (DS:SI = disk address packet).
        imm16(b"\xBE", "dap", "mov si, dap"),
        op(b"\xB4\x42", "mov ah, 0x42         ; INT 13h extended read"),
        op(b"\x89\xEA", "mov dx, bp           ; DL = boot drive"),
        op(b"\xCD\x13", "int 0x13             ; CF = 1 on error"),
        rel8(0x72, "disk_error", "jc disk_error"),
        op(b"\xBE" + struct.pack("<H", STAGE2_BUFFER), "mov si, 0x7E00       ; the sector just read"),
        rel16(0xE8, "print", "call print"),
        rel8(0xEB, "halt", "jmp halt"),
        label("disk_error"),
        imm16(b"\xBE", "msg_disk_error", "mov si, msg_disk_error"),
        rel16(0xE8, "print", "call print"),
        # 3. Done: sleep until the end of time (the test kills QEMU).
        label("halt"),
        op(b"\xF4", "hlt"),
        rel8(0xEB, "halt", "jmp halt"),
        # print: write the NUL-terminated string at DS:SI to COM1, polling LSR.THRE per byte.
        label("print"),
        op(b"\xAC", "lodsb                ; AL = [DS:SI++]"),
        op(b"\x84\xC0", "test al, al"),
        rel8(0x74, "print_done", "jz print_done     ; NUL ends the string"),
        op(b"\x88\xC3", "mov bl, al           ; keep the character"),
        op(b"\xBA" + struct.pack("<H", COM1 + 5), "mov dx, 0x3FD        ; LSR"),
        label("print_wait"),
        op(b"\xEC", "in al, dx"),
        op(bytes([0xA8, LSR_THRE]), "test al, 0x20        ; THR empty?"),
        rel8(0x74, "print_wait", "jz print_wait"),
        op(b"\x88\xD8", "mov al, bl"),
        op(b"\xBA" + struct.pack("<H", COM1 + 0), "mov dx, 0x3F8        ; THR"),
        op(b"\xEE", "out dx, al           ; transmit"),
        rel8(0xEB, "print", "jmp print"),
        label("print_done"),
        op(b"\xC3", "ret"),
        # Data.
        label("dap"),   # EDD disk address packet (Phoenix EDD 3.0, INT 13h AH=42h)
        op(struct.pack("<BBHHHQ", 0x10, 0, 1, STAGE2_BUFFER, 0, stage2_lba),
           f"db 16, 0 / dw 1 sector / dw 0x7E00, 0 (offset, segment) / dq {stage2_lba} (LBA)"),
        label("msg_boot"),
        op(BOOT_MARKER.encode() + b"\r\n\0", f'db "{BOOT_MARKER}", 13, 10, 0'),
        label("msg_disk_error"),
        op(DISK_ERROR_MARKER.encode() + b"\r\n\0", f'db "{DISK_ERROR_MARKER}", 13, 10, 0'),
    ]


def _size(item: tuple) -> int:
    kind = item[0]
    if kind == "label":
        return 0
    if kind == "bytes":
        return len(item[1])
    if kind == "rel8":
        return 2
    if kind == "rel16":
        return 3
    return len(item[1]) + 2     # imm16


def assemble(stage2_lba: int = 2048) -> bytes:
    """The 512-byte boot sector; ``stage2_lba`` is the LBA whose string it prints second."""
    if not 1 <= stage2_lba < 1 << 48:
        raise ValueError(f"stage2_lba {stage2_lba} out of range")
    items = program(stage2_lba)
    labels: dict[str, int] = {}
    pc = 0
    for item in items:                      # pass 1: offsets of labels
        if item[0] == "label":
            if item[1] in labels:
                raise ValueError(f"duplicate label {item[1]}")
            labels[item[1]] = pc
        pc += _size(item)
    out = bytearray()
    for item in items:                      # pass 2: emit, resolving label operands
        kind = item[0]
        end = len(out) + _size(item)        # displacements count from the next instruction
        if kind == "bytes":
            out += item[1]
        elif kind == "rel8":
            disp = labels[item[2]] - end
            if not -128 <= disp <= 127:
                raise ValueError(f"{item[3]}: rel8 displacement {disp} out of range")
            out += struct.pack("<Bb", item[1], disp)
        elif kind == "rel16":
            out += struct.pack("<Bh", item[1], labels[item[2]] - end)
        elif kind == "imm16":
            out += item[1] + struct.pack("<H", ORIGIN + labels[item[2]])
    if len(out) > SECTOR - 2 - 64:          # keep clear of the MBR partition table + signature
        raise ValueError(f"boot code is {len(out)} bytes, too long")
    out += bytes(SECTOR - 2 - len(out))
    out += b"\x55\xAA"                      # boot signature at offsets 510-511
    return bytes(out)


def stage2_sector(text: str = STAGE2_MARKER) -> bytes:
    """The sector the boot code prints second: ``text``, CR LF, NUL, zero padding."""
    data = text.encode() + b"\r\n\0"
    if len(data) > SECTOR:
        raise ValueError("stage-2 text longer than a sector")
    return data + bytes(SECTOR - len(data))


def listing(stage2_lba: int = 2048) -> str:
    """Offset, bytes and assembly of every instruction, for reading alongside the code."""
    code = assemble(stage2_lba)
    lines, pc = [], 0
    for item in program(stage2_lba):
        if item[0] == "label":
            lines.append(f"{ORIGIN + pc:04X}          {item[1]}:")
            continue
        n = _size(item)
        text = item[-1]
        lines.append(f"{ORIGIN + pc:04X}  {code[pc:pc + n].hex(' ')[:24]:<24}  {text}")
        pc += n
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print(f"usage: {sys.argv[0]} OUT [STAGE2_LBA]", file=sys.stderr)
        return 2
    lba = int(argv[1]) if len(argv) == 2 else 2048
    with open(argv[0], "wb") as f:
        f.write(assemble(lba))
    print(listing(lba))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
