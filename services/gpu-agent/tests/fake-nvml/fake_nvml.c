/*
 * A stand-in for libnvidia-ml.so.1 with the few NVML functions the agent calls, so that the real
 * binary and its NVML code path run end to end on a machine without a GPU. Not NVIDIA's code:
 * the signatures and return codes follow the public nvml.h. Built by the agent's tests with
 * `cc -shared -fPIC`.
 *
 * Two GPUs: GPU 0 reports everything; GPU 1 answers NVML_ERROR_NOT_SUPPORTED for utilization,
 * temperature and power. Controlled by the environment:
 *   FAKE_NVML_INIT=driver_not_loaded   nvmlInit_v2 fails with NVML_ERROR_DRIVER_NOT_LOADED
 *   FAKE_NVML_STATE_FILE=PATH          while PATH exists, GPU 0's memory query answers
 *                                      NVML_ERROR_GPU_IS_LOST (read on every call)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int nvmlReturn_t;
typedef struct fake_device *nvmlDevice_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_GPU_IS_LOST = 15,
};

typedef struct { unsigned int gpu; unsigned int memory; } nvmlUtilization_t;
typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

struct fake_device {
    const char *name;
    const char *uuid;
    unsigned long long total;
    unsigned long long used;
    int supports_sensors;
    unsigned int utilization;
    unsigned int temperature;
    unsigned int power_mw;
};

static struct fake_device devices[] = {
    {"NVIDIA Fake H100", "GPU-fake-0000", 85520809984ULL, 1073741824ULL, 1, 42, 55, 123456},
    {"NVIDIA Fake T4", "GPU-fake-0001", 16106127360ULL, 0ULL, 0, 0, 0, 0},
};
#define DEVICE_COUNT (sizeof devices / sizeof devices[0])

static nvmlReturn_t copy_string(const char *value, char *out, unsigned int length) {
    if (out == NULL || length <= strlen(value)) return NVML_ERROR_INVALID_ARGUMENT;
    strcpy(out, value);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit_v2(void) {
    const char *mode = getenv("FAKE_NVML_INIT");
    if (mode != NULL && strcmp(mode, "driver_not_loaded") == 0) return NVML_ERROR_DRIVER_NOT_LOADED;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlShutdown(void) { return NVML_SUCCESS; }
const char *nvmlErrorString(nvmlReturn_t result) { (void)result; return "fake NVML error"; }

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    return copy_string("999.99.99", version, length);
}
nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    return copy_string("12.999.99", version, length);
}
nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version) {
    *version = 12040;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    *count = DEVICE_COUNT;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (index >= DEVICE_COUNT) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &devices[index];
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    return copy_string(device->name, name, length);
}
nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    return copy_string(device->uuid, uuid, length);
}
nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    const char *state = getenv("FAKE_NVML_STATE_FILE");
    if (device == &devices[0] && state != NULL && access(state, F_OK) == 0)
        return NVML_ERROR_GPU_IS_LOST;
    memory->total = device->total;
    memory->used = device->used;
    memory->reserved = 0;
    memory->free = device->total - device->used;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization) {
    if (!device->supports_sensors) return NVML_ERROR_NOT_SUPPORTED;
    utilization->gpu = device->utilization;
    utilization->memory = 0;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensor, unsigned int *temperature) {
    (void)sensor;
    if (!device->supports_sensors) return NVML_ERROR_NOT_SUPPORTED;
    *temperature = device->temperature;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power_mw) {
    if (!device->supports_sensors) return NVML_ERROR_NOT_SUPPORTED;
    *power_mw = device->power_mw;
    return NVML_SUCCESS;
}
