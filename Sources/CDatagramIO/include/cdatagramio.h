#ifndef CDATAGRAMIO_H
#define CDATAGRAMIO_H

/* The few Linux socket calls Swift cannot reach directly: mmsghdr and the batch calls need
 * _GNU_SOURCE, and the CMSG_* accessors and epoll_event (packed on x86-64) are macros and
 * layouts Swift imports poorly. Everything else stays in Swift. */

#include <stdint.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/uio.h>

/* Same layout as the kernel's struct mmsghdr. */
typedef struct {
    struct msghdr msg_hdr;
    unsigned int msg_len;
} dio_mmsghdr;

/* Bytes of control space one message needs for a UDP_SEGMENT or UDP_GRO cmsg. */
#define DIO_CONTROL_SPACE 64

int dio_recvmmsg(int fd, dio_mmsghdr *msgs, unsigned int count);
int dio_sendmmsg(int fd, dio_mmsghdr *msgs, unsigned int count);

/* Puts one UDP_SEGMENT cmsg (the GSO segment size) in control, which must hold
 * DIO_CONTROL_SPACE bytes, and points the message at it. */
void dio_set_segment_size(struct msghdr *msg, void *control, uint16_t segment_size);
/* The GRO segment size the kernel reported for a received message, or 0. */
int dio_received_segment_size(const struct msghdr *msg);

int dio_enable_receive_offload(int fd);
int dio_udp_segment_supported(int fd);

/* epoll with the events unpacked into two arrays. timeout_ns < 0 waits without limit; the
 * nanosecond wait (epoll_pwait2) falls back to epoll_wait, rounded up to a millisecond. */
enum {
    DIO_EPOLLIN = 0x001, DIO_EPOLLOUT = 0x004, DIO_EPOLLERR = 0x008, DIO_EPOLLHUP = 0x010,
    DIO_EPOLL_CTL_ADD = 1, DIO_EPOLL_CTL_DEL = 2, DIO_EPOLL_CTL_MOD = 3,
};
int dio_epoll_create(void);
/* A non-blocking, close-on-exec eventfd. */
int dio_eventfd(void);
void dio_set_thread_name(const char *name);
int dio_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data);
int dio_epoll_wait(int epfd, uint64_t *data, uint32_t *events, int max, int64_t timeout_ns);

/* Attaches a classic BPF program (struct sock_filter[]) to the socket's SO_REUSEPORT group. */
int dio_attach_reuseport_cbpf(int fd, const void *instructions, unsigned short count);

#endif
