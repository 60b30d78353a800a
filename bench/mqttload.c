/*
 * Fast MQTT load tool for the benchmarks: a QoS 1 publisher of meter/vehicle readings and a
 * bare counting subscriber, on libmosquitto (installed with mosquitto-clients).
 *
 * Built by bench/throughput.py with: gcc -O2 -o mqttload mqttload.c -l:libmosquitto.so.1 -lpthread
 * The prototypes are declared here because Debian ships no libmosquitto headers without
 * libmosquitto-dev.
 *
 *   mqttload pub HOST PORT CLIENT_ID COUNT DEVICES PROTOCOL PREFIX RATE DEVICE_OFFSET [SHAPE]
 *     Publishes COUNT readings (meters and vehicles alternately over DEVICES ids of each
 *     kind), QoS 1, each stamped with the wall-clock time of its publication (strictly
 *     increasing per device). RATE 0 = as fast as the broker accepts. With REGISTERS 1 the
 *     readings carry cumulative registers (kwhRegisterAc, kwhRegisterDc) that grow by a
 *     plausible amount each time, instead of interval energies. With SHAPE 2 every reading
 *     is a Shelly Gen2 NotifyStatus (PREFIX/shelly-aN/events/rpc and .../shelly-bN/...: two
 *     sets of DEVICES meters) with its Wh register, voltage and epoch timestamp in ms, for a
 *     payload mapping (SOURCES_FILE) to decode. Prints one JSON line.
 *   mqttload sub HOST PORT CLIENT_ID PROTOCOL TOPIC COUNT TIMEOUT_S
 *     Persistent QoS 1 session; counts messages until COUNT or TIMEOUT_S. Prints JSON.
 *     With COUNT 0 it only subscribes (creating the session) and exits.
 */
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct mosquitto;
typedef struct mqtt5__property mosquitto_property;
struct mosquitto_message {
    int mid;
    char *topic;
    void *payload;
    int payloadlen;
    int qos;
    bool retain;
};
int mosquitto_lib_init(void);
int mosquitto_lib_cleanup(void);
struct mosquitto *mosquitto_new(const char *id, bool clean_session, void *obj);
int mosquitto_int_option(struct mosquitto *mosq, int option, int value);
int mosquitto_max_inflight_messages_set(struct mosquitto *mosq, unsigned int max);
int mosquitto_connect(struct mosquitto *mosq, const char *host, int port, int keepalive);
int mosquitto_connect_bind_v5(struct mosquitto *mosq, const char *host, int port, int keepalive,
                              const char *bind_address, const mosquitto_property *properties);
int mosquitto_property_add_int32(mosquitto_property **proplist, int identifier, unsigned int value);
void mosquitto_property_free_all(mosquitto_property **properties);
int mosquitto_disconnect(struct mosquitto *mosq);
int mosquitto_loop_start(struct mosquitto *mosq);
int mosquitto_loop_stop(struct mosquitto *mosq, bool force);
int mosquitto_loop_forever(struct mosquitto *mosq, int timeout, int max_packets);
int mosquitto_publish(struct mosquitto *mosq, int *mid, const char *topic, int payloadlen,
                      const void *payload, int qos, bool retain);
int mosquitto_subscribe(struct mosquitto *mosq, int *mid, const char *sub, int qos);
void mosquitto_publish_callback_set(struct mosquitto *mosq, void (*cb)(struct mosquitto *, void *, int));
void mosquitto_message_callback_set(struct mosquitto *mosq,
                                    void (*cb)(struct mosquitto *, void *, const struct mosquitto_message *));
void mosquitto_connect_callback_set(struct mosquitto *mosq, void (*cb)(struct mosquitto *, void *, int));
void mosquitto_subscribe_callback_set(struct mosquitto *mosq,
                                      void (*cb)(struct mosquitto *, void *, int, int, const int *));
void mosquitto_destroy(struct mosquitto *mosq);

#define MOSQ_OPT_PROTOCOL_VERSION 1
#define MOSQ_OPT_RECEIVE_MAXIMUM 4
#define MOSQ_OPT_SEND_MAXIMUM 5
#define MQTT_PROP_SESSION_EXPIRY_INTERVAL 17

static atomic_long acked = 0;
static atomic_long received = 0;
static double first_at = 0, last_at = 0; /* written by the network thread only */
static atomic_int subscribed = 0;
static atomic_int connected = 0;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long long wall_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static void iso_us(long long us, char *out, size_t n) {
    time_t secs = (time_t)(us / 1000000LL);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char base[32];
    strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, n, "%s.%06lldZ", base, us % 1000000LL);
}

static void on_publish(struct mosquitto *m, void *obj, int mid) { (void)m; (void)obj; (void)mid; acked++; }
static double now_s(void);
static void on_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg) {
    (void)m; (void)obj; (void)msg;
    double t = now_s();
    if (received == 0) first_at = t;
    last_at = t;
    received++;
}
static void on_connect(struct mosquitto *m, void *obj, int rc) { (void)m; (void)obj; if (rc == 0) connected = 1; }
static void on_subscribe(struct mosquitto *m, void *obj, int mid, int n, const int *q) {
    (void)m; (void)obj; (void)mid; (void)n; (void)q; subscribed = 1;
}

static struct mosquitto *make_client(const char *id, bool clean, int protocol) {
    struct mosquitto *mosq = mosquitto_new(id, clean, NULL);
    if (!mosq) { fprintf(stderr, "mosquitto_new failed\n"); exit(2); }
    mosquitto_int_option(mosq, MOSQ_OPT_PROTOCOL_VERSION, protocol == 5 ? 5 : 4);
    return mosq;
}

static int cmd_pub(int argc, char **argv) {
    if (argc != 11 && argc != 12) { fprintf(stderr, "usage: pub HOST PORT ID COUNT DEVICES PROTO PREFIX RATE OFFSET [REGISTERS]\n"); return 2; }
    int shape = argc == 12 ? atoi(argv[11]) : 0;
    int registers = shape == 1;
    int shelly = shape == 2;
    const char *host = argv[2];
    int port = atoi(argv[3]);
    const char *id = argv[4];
    long count = atol(argv[5]);
    int devices = atoi(argv[6]);
    int protocol = atoi(argv[7]);
    const char *prefix = argv[8];
    double rate = atof(argv[9]);
    int offset = atoi(argv[10]);

    struct mosquitto *mosq = make_client(id, true, protocol);
    mosquitto_max_inflight_messages_set(mosq, 1000);
    mosquitto_int_option(mosq, MOSQ_OPT_SEND_MAXIMUM, 1000);
    mosquitto_publish_callback_set(mosq, on_publish);
    mosquitto_connect_callback_set(mosq, on_connect);
    if (mosquitto_connect(mosq, host, port, 30) != 0) { fprintf(stderr, "connect failed\n"); return 1; }
    mosquitto_loop_start(mosq);
    while (!connected) usleep(1000);

    long long *last_m = calloc(devices, sizeof(long long));
    long long *last_v = calloc(devices, sizeof(long long));
    double *reg_m = calloc(devices, sizeof(double));
    double *reg_v = calloc(devices, sizeof(double));
    for (int d = 0; d < devices; d++) { reg_m[d] = 1000.0 + d; reg_v[d] = 500.0 + d; }
    char topic[256], payload[512], ts[64];
    const char *sep = prefix[0] ? "/" : "";
    double started = now_s();
    for (long i = 0; i < count; i++) {
        if (rate > 0) {
            double due = started + i / rate;
            double wait = due - now_s();
            if (wait > 0) usleep((useconds_t)(wait * 1e6));
        }
        /* keep at most ~20,000 unacknowledged in libmosquitto's own queue */
        while (i - acked > 20000) usleep(200);
        int dev = (int)((i / 2) % devices) + offset;
        int idx = dev - offset;
        long long us = wall_us();
        int len;
        if (shelly) {
            long long *last = i % 2 == 0 ? last_m : last_v;
            double *reg = i % 2 == 0 ? reg_m : reg_v;
            us -= us % 1000; /* ms: the epoch survives a double exactly enough */
            if (us <= last[idx]) us = last[idx] + 1000;
            last[idx] = us;
            reg[idx] += 0.0001 + (i % 97) / 1e6; /* kWh, as the native registers grow */
            snprintf(topic, sizeof topic, "%s%sshelly-%c%d/events/rpc", prefix, sep,
                     i % 2 == 0 ? 'a' : 'b', dev);
            len = snprintf(payload, sizeof payload,
                           "{\"src\":\"shelly-%c%d\",\"dst\":\"collector\",\"method\":\"NotifyStatus\","
                           "\"params\":{\"ts\":%lld.%03lld,\"switch:0\":{\"id\":0,\"aenergy\":{\"total\":%.3f},"
                           "\"apower\":%.1f,\"voltage\":%.1f}}}",
                           i % 2 == 0 ? 'a' : 'b', dev, us / 1000000, (us / 1000) % 1000,
                           reg[idx] * 1000.0, 100.0 + (i % 50), 225.0 + (i % 11));
        } else if (i % 2 == 0) {
            if (us <= last_m[idx]) us = last_m[idx] + 1;
            last_m[idx] = us;
            iso_us(us, ts, sizeof ts);
            snprintf(topic, sizeof topic, "%s%smeters/m%d/reading", prefix, sep, dev);
            if (registers) {
                reg_m[idx] += 0.0001 + (i % 97) / 1e6; /* well under the plausible power */
                len = snprintf(payload, sizeof payload,
                               "{\"meterId\":\"m%d\",\"kwhRegisterAc\":%.6f,\"voltage\":%.1f,\"timestamp\":\"%s\"}",
                               dev, reg_m[idx], 225.0 + (i % 11), ts);
            } else {
                len = snprintf(payload, sizeof payload,
                               "{\"meterId\":\"m%d\",\"kwhConsumedAc\":%.3f,\"voltage\":%.1f,\"timestamp\":\"%s\"}",
                               dev, 0.5 + (i % 97) / 100.0, 225.0 + (i % 11), ts);
            }
        } else {
            if (us <= last_v[idx]) us = last_v[idx] + 1;
            last_v[idx] = us;
            iso_us(us, ts, sizeof ts);
            snprintf(topic, sizeof topic, "%s%svehicles/v%d/reading", prefix, sep, dev);
            if (registers) {
                reg_v[idx] += 0.00009 + (i % 89) / 1e6;
                len = snprintf(payload, sizeof payload,
                               "{\"vehicleId\":\"v%d\",\"soc\":%.1f,\"kwhRegisterDc\":%.6f,\"batteryTemp\":%.1f,\"timestamp\":\"%s\"}",
                               dev, (double)(i % 100), reg_v[idx], 20.0 + (i % 15), ts);
            } else {
                len = snprintf(payload, sizeof payload,
                               "{\"vehicleId\":\"v%d\",\"soc\":%.1f,\"kwhDeliveredDc\":%.3f,\"batteryTemp\":%.1f,\"timestamp\":\"%s\"}",
                               dev, (double)(i % 100), 0.45 + (i % 89) / 100.0, 20.0 + (i % 15), ts);
            }
        }
        int rc;
        while ((rc = mosquitto_publish(mosq, NULL, topic, len, payload, 1, false)) != 0) {
            usleep(1000); /* not connected right now: libmosquitto reconnects, try again */
        }
    }
    double sent = now_s();
    while (acked < count) {
        if (now_s() - sent > 600) { fprintf(stderr, "timeout waiting for PUBACKs\n"); return 1; }
        usleep(500);
    }
    double done = now_s();
    mosquitto_disconnect(mosq);
    mosquitto_loop_stop(mosq, false);
    mosquitto_destroy(mosq);
    printf("{\"published\":%ld,\"seconds\":%.4f,\"rate\":%.1f}\n", count, done - started,
           count / (done - started));
    return 0;
}

static int cmd_sub(int argc, char **argv) {
    if (argc != 9) { fprintf(stderr, "usage: sub HOST PORT ID PROTO TOPIC COUNT TIMEOUT\n"); return 2; }
    const char *host = argv[2];
    int port = atoi(argv[3]);
    const char *id = argv[4];
    int protocol = atoi(argv[5]);
    const char *topic = argv[6];
    long count = atol(argv[7]);
    double timeout = atof(argv[8]);

    struct mosquitto *mosq = make_client(id, false, protocol);
    if (protocol == 5) mosquitto_int_option(mosq, MOSQ_OPT_RECEIVE_MAXIMUM, 65535);
    mosquitto_message_callback_set(mosq, on_message);
    mosquitto_connect_callback_set(mosq, on_connect);
    mosquitto_subscribe_callback_set(mosq, on_subscribe);
    int rc;
    if (protocol == 5) { /* MQTT 5 sessions end at disconnect unless they ask for an expiry */
        mosquitto_property *props = NULL;
        mosquitto_property_add_int32(&props, MQTT_PROP_SESSION_EXPIRY_INTERVAL, 3600);
        rc = mosquitto_connect_bind_v5(mosq, host, port, 30, NULL, props);
        mosquitto_property_free_all(&props);
    } else {
        rc = mosquitto_connect(mosq, host, port, 30);
    }
    if (rc != 0) { fprintf(stderr, "connect failed\n"); return 1; }
    mosquitto_loop_start(mosq);
    while (!connected) usleep(1000);
    mosquitto_subscribe(mosq, NULL, topic, 1);
    while (!subscribed) usleep(1000);
    double started = now_s();
    while (count > 0 && received < count && now_s() - started < timeout) usleep(200);
    mosquitto_disconnect(mosq);
    mosquitto_loop_stop(mosq, false);
    mosquitto_destroy(mosq);
    double span = last_at > first_at ? last_at - first_at : 0;
    printf("{\"received\":%ld,\"seconds\":%.4f,\"rate\":%.1f}\n", (long)received, span,
           span > 0 ? received / span : 0.0);
    return 0;
}

int main(int argc, char **argv) {
    mosquitto_lib_init();
    int rc = 2;
    if (argc > 1 && strcmp(argv[1], "pub") == 0) rc = cmd_pub(argc, argv);
    else if (argc > 1 && strcmp(argv[1], "sub") == 0) rc = cmd_sub(argc, argv);
    else fprintf(stderr, "usage: mqttload pub|sub ...\n");
    mosquitto_lib_cleanup();
    return rc;
}
