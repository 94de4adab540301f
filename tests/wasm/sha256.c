/* SHA-256 of 1 MiB of bytes the module generates itself (byte i is the
 * top byte of i * 2654435761 mod 2^32), printed as a hex digest and a
 * newline: a CPU-bound function that ignores its request body. The
 * algorithm is the benchmark's (wasm/bench/sha256.h). */
#include <stdint.h>
#include <stdio.h>

#include "../../wasm/bench/sha256.h"

#define BUF_BYTES (1u << 20)

static uint8_t buf[BUF_BYTES];

int main(void) {
    for (uint32_t i = 0; i < BUF_BYTES; i++)
        buf[i] = (uint8_t)(i * 2654435761u >> 24);
    uint8_t digest[32];
    sha256(buf, BUF_BYTES, digest);
    for (int i = 0; i < 32; i++)
        printf("%02x", digest[i]);
    printf("\n");
    return 0;
}
