/* tcpee OUT: one process with a TCP listener on 127.0.0.1:PORT, an established connection
 * to it (both ends, 5 bytes sent to the accepted end and not read), and a UDP socket bound
 * to 127.0.0.1:PORT+1. Prints "ready PORT". */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int port = 47000 + getpid() % 1000;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    int one = 1;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(l, (void *)&a, sizeof a) || listen(l, 8)) { perror("listen"); return 1; }
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(c, (void *)&a, sizeof a)) { perror("connect"); return 1; }
    int s = accept(l, NULL, NULL);
    if (write(c, "hello", 5) != 5) return 1;
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in b = a;
    b.sin_port = htons(port + 1);
    if (bind(u, (void *)&b, sizeof b)) { perror("udp"); return 1; }
    FILE *f = fopen(argv[1], "w");
    fprintf(f, "ready %d\n", port);
    fclose(f);
    (void)s;
    for (;;) pause();
}
