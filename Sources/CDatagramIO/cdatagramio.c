#define _GNU_SOURCE
#include "cdatagramio.h"
#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <time.h>
#include <netinet/in.h>
#include <linux/filter.h>
#include <sys/eventfd.h>
#include <pthread.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef SO_ATTACH_REUSEPORT_CBPF
#define SO_ATTACH_REUSEPORT_CBPF 51
#endif

_Static_assert(sizeof(dio_mmsghdr) == sizeof(struct mmsghdr), "mmsghdr layout");

int dio_recvmmsg(int fd, dio_mmsghdr *msgs, unsigned int count) {
    return recvmmsg(fd, (struct mmsghdr *)msgs, count, MSG_DONTWAIT, NULL);
}

int dio_sendmmsg(int fd, dio_mmsghdr *msgs, unsigned int count) {
    return sendmmsg(fd, (struct mmsghdr *)msgs, count, MSG_DONTWAIT);
}

void dio_set_segment_size(struct msghdr *msg, void *control, uint16_t segment_size) {
    msg->msg_control = control;
    msg->msg_controllen = CMSG_SPACE(sizeof(uint16_t));
    struct cmsghdr *cm = CMSG_FIRSTHDR(msg);
    cm->cmsg_level = SOL_UDP;
    cm->cmsg_type = UDP_SEGMENT;
    cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    memcpy(CMSG_DATA(cm), &segment_size, sizeof segment_size);
}

int dio_received_segment_size(const struct msghdr *msg) {
    if (msg->msg_controllen == 0) return 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR((struct msghdr *)msg); cm != NULL;
         cm = CMSG_NXTHDR((struct msghdr *)msg, cm)) {
        if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO && cm->cmsg_len >= CMSG_LEN(sizeof(int))) {
            int size;
            memcpy(&size, CMSG_DATA(cm), sizeof size);
            return size > 0 ? size : 0;
        }
    }
    return 0;
}

int dio_enable_receive_offload(int fd) {
    int on = 1;
    return setsockopt(fd, SOL_UDP, UDP_GRO, &on, sizeof on);
}

/* The kernel has GSO for UDP if it knows the option at all. */
int dio_udp_segment_supported(int fd) {
    int value = 0;
    socklen_t len = sizeof value;
    return getsockopt(fd, SOL_UDP, UDP_SEGMENT, &value, &len) == 0;
}

int dio_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.u64 = data;
    return epoll_ctl(epfd, op, fd, &ev);
}

static int pwait2_missing = 0;

int dio_epoll_wait(int epfd, uint64_t *data, uint32_t *events, int max, int64_t timeout_ns) {
    struct epoll_event ev[256];
    if (max > 256) max = 256;
    int n = -1;
#ifdef SYS_epoll_pwait2
    if (!pwait2_missing) {
        struct timespec ts = { timeout_ns / 1000000000, timeout_ns % 1000000000 };
        n = (int)syscall(SYS_epoll_pwait2, epfd, ev, max, timeout_ns < 0 ? NULL : &ts, NULL, (size_t)8);
        if (n < 0 && errno == ENOSYS) pwait2_missing = 1;
    }
#else
    pwait2_missing = 1;
#endif
    if (pwait2_missing) {
        int ms = timeout_ns < 0 ? -1 : (int)((timeout_ns + 999999) / 1000000);
        n = epoll_wait(epfd, ev, max, ms);
    }
    for (int i = 0; i < n; i++) {
        data[i] = ev[i].data.u64;
        events[i] = ev[i].events;
    }
    return n;
}

int dio_attach_reuseport_cbpf(int fd, const void *instructions, unsigned short count) {
    struct sock_fprog prog = { count, (struct sock_filter *)instructions };
    return setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &prog, sizeof prog);
}

int dio_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }
int dio_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

void dio_set_thread_name(const char *name) {
    char shortened[16];
    strncpy(shortened, name, sizeof shortened - 1);
    shortened[sizeof shortened - 1] = 0;
    pthread_setname_np(pthread_self(), shortened);
}
