/* A stand-in for libnvidia-ml with fixed figures, for tests on machines with
 * no NVIDIA GPU: built by the tests with `cc -shared`, and loaded through
 * DATAFACTORY_NVML_LIBRARY, so the real nvml-wrapper path runs (the library
 * is opened, initialised, asked for its driver, devices, memory,
 * utilisation, temperature and processes, and shut down).
 *
 * It implements only the entry points nvml-wrapper calls for
 * crates/launcher/src/gpu.rs (any other is missing, and nvml-wrapper then
 * answers "function not loaded"). Two GPUs; every figure is made up, and
 * the names say so. The signatures follow NVIDIA's nvml.h. */

#include <stddef.h>
#include <string.h>

typedef int nvmlReturn_t; /* NVML_SUCCESS = 0 */
#define NVML_SUCCESS 0
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_INSUFFICIENT_SIZE 7

typedef struct {
    const char *name;
    unsigned long long total, used;
    unsigned int gpu_percent, memory_percent, temperature_c;
} fake_gpu;

static const unsigned long long MIB = 1024ULL * 1024ULL;

static fake_gpu gpus[2] = {
    {"Fake GPU 0 (test NVML shim)", 81920ULL * 1024 * 1024, 12288ULL * 1024 * 1024, 37, 21, 51},
    {"Fake GPU 1 (test NVML shim)", 81920ULL * 1024 * 1024, 2048ULL * 1024 * 1024, 5, 2, 44},
};

typedef fake_gpu *nvmlDevice_t;

typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;

typedef struct {
    unsigned int gpu, memory;
} nvmlUtilization_t;

static int known(nvmlDevice_t d) { return d == &gpus[0] || d == &gpus[1]; }

static nvmlReturn_t copy(char *out, unsigned int length, const char *text) {
    if (out == NULL || length <= strlen(text)) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(out, text, strlen(text) + 1);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit_v2(void) { return NVML_SUCCESS; }
nvmlReturn_t nvmlInitWithFlags(unsigned int flags) { (void)flags; return NVML_SUCCESS; }
nvmlReturn_t nvmlShutdown(void) { return NVML_SUCCESS; }
const char *nvmlErrorString(nvmlReturn_t r) { return r == NVML_SUCCESS ? "Success" : "fake NVML error"; }

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    return copy(version, length, "0.0-test-shim");
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *count = 2;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (index >= 2 || device == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &gpus[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    if (!known(device)) return NVML_ERROR_INVALID_ARGUMENT;
    return copy(name, length, device->name);
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    if (!known(device) || memory == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    memory->total = device->total;
    memory->reserved = 512 * MIB;
    memory->used = device->used;
    memory->free = device->total - device->used - memory->reserved;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *rates) {
    if (!known(device) || rates == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    rates->gpu = device->gpu_percent;
    rates->memory = device->memory_percent;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensor, unsigned int *temperature) {
    if (!known(device) || sensor != 0 || temperature == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *temperature = device->temperature_c;
    return NVML_SUCCESS;
}

/* No process runs on a made-up GPU: a count of 0 (nvml-wrapper asks for
 * the count first, with no buffer). */
static nvmlReturn_t no_processes(nvmlDevice_t device, unsigned int *count, void *infos) {
    (void)infos;
    if (!known(device) || count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *count = 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *count, void *infos) {
    return no_processes(d, count, infos);
}

nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t d, unsigned int *count, void *infos) {
    return no_processes(d, count, infos);
}
