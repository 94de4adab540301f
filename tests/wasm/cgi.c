/* A CGI answer: a status and headers of its own, the request echoed. */
#include <stdio.h>
#include <stdlib.h>

static const char *env(const char *name) {
    const char *v = getenv(name);
    return v ? v : "";
}

int main(int argc, char **argv) {
    printf("Status: 201 Created\r\n");
    printf("Content-Type: application/json\r\n");
    printf("X-Path: %s\r\n\r\n", env("PATH_INFO"));
    printf("{\"method\":\"%s\",\"query\":\"%s\",\"argv0\":\"%s\",\"length\":\"%s\"}\n",
           env("REQUEST_METHOD"), env("QUERY_STRING"), argc > 0 ? argv[0] : "",
           env("CONTENT_LENGTH"));
    return 0;
}
