/* The exec target for W1/W3: a freestanding static ELF that exits at once,
 * so an exec measures the exec path (and any scanner sitting on it), not the
 * program, and no loader or libc from outside the watched mount is opened.
 * Built with -nostdlib -static; x86_64 and aarch64 syscall stubs. */
void _start(void) {
#if defined(__x86_64__)
    __asm__ volatile("mov $60, %eax\n\txor %edi, %edi\n\tsyscall");
#elif defined(__aarch64__)
    __asm__ volatile("mov x8, #93\n\tmov x0, #0\n\tsvc #0");
#else
#error "target.c: add an exit syscall stub for this architecture"
#endif
    for (;;) {}
}
