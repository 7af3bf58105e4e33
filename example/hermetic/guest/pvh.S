# The hermetic example's guest kernel: a PVH ELF that cloud-hypervisor (and
# QEMU) boot directly. It prints one line naming the VM on the 16550 serial
# port, then idles in `hlt`; with `procurator.poweroff` on its command line
# it powers off after that line instead, through CH's ACPI shutdown port.
#
# PVH boot protocol (Xen's arch-x86/hvm/start_info.h): entered in 32-bit
# protected mode, paging off, flat segments, interrupts off, with %ebx
# holding the physical address of `hvm_start_info`, whose u64 at offset 24
# is the physical address of the NUL-terminated command line (0: none).
#
# The line is "pcr-guest: NAME is up", NAME being the value of
# `procurator.name=` or else `systemd.hostname=` (evalCluster puts the VM's
# name there), or "unnamed". ch-sim prints the same line for this kernel
# (it recognises the marker string below); keep the two in step.

        .set SERIAL, 0x3f8          # COM1 data register
        .set SERIAL_LSR, 0x3fd      # line status; bit 5: can take a byte
        .set ACPI_SHUTDOWN, 0x600   # CH's AcpiShutdownDevice
        .set S5_SLEEP, 0x34         # SLP_TYP 5 (S5) << 2 | SLP_EN

        .section .note.Xen, "a", @note
        .balign 4
        .long 4                     # namesz: "Xen\0"
        .long 8                     # descsz
        .long 18                    # XEN_ELFNOTE_PHYS32_ENTRY
        .asciz "Xen"
        .balign 4
        .quad pvh_start             # low 32 bits: the 32-bit entry point

        .text
        .code32
        .globl pvh_start
pvh_start:
        cli
        cld
        mov $stack_top, %esp
        xor %esi, %esi
        test %ebx, %ebx
        jz 1f
        mov 24(%ebx), %esi          # command line (low half; boots below 4 GiB)
1:
        mov $prefix, %edi
        call puts
        mov $key_name, %edi
        call find_value
        test %edi, %edi
        jnz 2f
        mov $key_hostname, %edi
        call find_value
        test %edi, %edi
        jnz 2f
        mov $unnamed, %edi
2:
        call putword
        mov $suffix, %edi
        call puts
        mov $key_poweroff, %edi
        call find_word
        test %eax, %eax
        jz idle
        mov $S5_SLEEP, %al
        mov $ACPI_SHUTDOWN, %dx
        outb %al, %dx
idle:
        hlt
        jmp idle

# putc: writes %al to the serial port once it can take a byte.
putc:
        push %eax
        mov $SERIAL_LSR, %dx
3:      inb %dx, %al
        test $0x20, %al
        jz 3b
        pop %eax
        mov $SERIAL, %dx
        outb %al, %dx
        ret

# puts: writes the NUL-terminated string at %edi.
puts:
        movb (%edi), %al
        test %al, %al
        jz 4f
        call putc
        inc %edi
        jmp puts
4:      ret

# putword: writes the string at %edi up to a NUL or a space.
putword:
        movb (%edi), %al
        test %al, %al
        jz 5f
        cmp $' ', %al
        je 5f
        call putc
        inc %edi
        jmp putword
5:      ret

# find_value: %edi = a key ending in '='; returns in %edi the address of
# its value in the command line %esi (a word starting with the key), or 0.
find_value:
        call find_word_start
        ret

# find_word: %eax = 1 when the command line %esi has the word at %edi
# (followed by a space or the end), else 0.
find_word:
        call find_word_start
        xor %eax, %eax
        test %edi, %edi
        jz 6f
        movb (%edi), %cl
        test %cl, %cl
        jz 7f
        cmp $' ', %cl
        jne 6f
7:      mov $1, %eax
6:      ret

# find_word_start: %edi = a NUL-terminated pattern; returns in %edi the
# address just after the first word of the command line %esi that starts
# with the pattern, or 0. Keeps %esi.
find_word_start:
        mov %edi, %ebp              # the pattern
        test %esi, %esi
        jz 13f
        mov %esi, %ebx              # the start of the current word
8:      movb (%ebx), %al
        test %al, %al
        jz 13f
        cmp $' ', %al
        jne 9f
        inc %ebx                    # skip spaces between words
        jmp 8b
9:      mov %ebx, %ecx              # compare the word with the pattern
        mov %ebp, %edx
10:     movb (%edx), %al
        test %al, %al
        jz 14f                      # the whole pattern matched
        cmpb (%ecx), %al
        jne 11f
        inc %ecx
        inc %edx
        jmp 10b
11:     movb (%ebx), %al            # no match: skip to the next word
        test %al, %al
        jz 13f
        cmp $' ', %al
        je 8b
        inc %ebx
        jmp 11b
13:     xor %edi, %edi
        ret
14:     mov %ecx, %edi
        ret

        .section .rodata
marker:     .asciz "procurator-pvh-guest v1"
prefix:     .asciz "pcr-guest: "
suffix:     .asciz " is up\n"
unnamed:    .asciz "unnamed"
key_name:   .asciz "procurator.name="
key_hostname: .asciz "systemd.hostname="
key_poweroff: .asciz "procurator.poweroff"

        .bss
        .balign 16
        .skip 4096
stack_top:
