/* Imports a function the Wasm guest does not provide. */
__attribute__((import_module("env"), import_name("host_secret"))) int host_secret(void);

int main(void) { return host_secret(); }
