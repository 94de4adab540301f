/* Misbehaviours, chosen by PATH_INFO: a trap, a loop, an exit status. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    const char *path = getenv("PATH_INFO");
    if (!path)
        path = "";
    if (strcmp(path, "/trap") == 0)
        __builtin_trap();
    if (strcmp(path, "/loop") == 0) {
        volatile unsigned long n = 0;
        for (;;)
            n++;
    }
    if (strcmp(path, "/exit") == 0) {
        fprintf(stderr, "exiting 3 on purpose\n");
        exit(3);
    }
    printf("fine\n");
    return 0;
}
