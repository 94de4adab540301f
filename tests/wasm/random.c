/* 16 bytes from WASI random_get, in hex. */
#include <stdio.h>
#include <unistd.h>

int main(void) {
    unsigned char b[16];
    if (getentropy(b, sizeof b) != 0)
        return 1;
    for (unsigned i = 0; i < sizeof b; i++)
        printf("%02x", b[i]);
    printf("\n");
    return 0;
}
