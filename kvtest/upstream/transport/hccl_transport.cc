// kvtest's HCCL transport for the real llm_datadist built against hixl's unit-test stubs.
//
// In that build (hixl tests/depends/llm_datadist/src/mmpa_stub.cc) a mock inside libllm_datadist_base.so
// answers dlopen("libhcomm.so") and dlsym(): HcclBatchGet/HcclBatchPut become memcpy on raw addresses,
// which only works while both ends live in one process. libllm_datadist_base.so is linked with
// --wrap=dlsym (hixl tests/depends/llm_datadist/CMakeLists.txt), so its dlsym calls go to a global
// __wrap_dlsym. This library, loaded first (LD_PRELOAD), defines __wrap_dlsym too: the dynamic linker
// binds the calls to ours, we answer the HCCL names with the functions below and hand every other name
// to the stub's own __wrap_dlsym. Everything above HCCL stays the real, unmodified llm_datadist.
//
// Bytes cross processes with process_vm_readv/process_vm_writev. The peer of a HcclComm rank is found
// through the rank table passed to HcclCommInitClusterInfoMemConfig: every process writes its pid
// under $KVTEST_HCCL_DIR (default /tmp/kvtest-hccl-<uid>) in a file named after its own rank entry
// (server_id, device_id, device_ip), and a batch looks the remote entry's file up.
//
// Faults for kvtest's own checks: KVTEST_HCCL_FAULT=flip|drop[:get|:put][:INDEX][:min=N] flips the first
// byte of, or drops, descriptor INDEX (default: the middle one) of every matching batch of at least N
// descriptors (default 2, which spares the one-descriptor control messages), and says so on stderr.
// KVTEST_HCCL_TRACE=1 prints every batch (peer, descriptors, sizes).

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <csignal>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "acl/acl.h"
#include "acl/error_codes/rt_error_codes.h"
#include "hccl/hccl_types.h"
#include "hcomm/hcomm_res_defs.h"
#include "comm_adapter/comm_types.h"

#define KV_EXPORT __attribute__((visibility("default")))

namespace {

using Json = nlohmann::json;

struct Comm {
  uint32_t rank = 0;
  std::map<uint32_t, std::string> identity;  // rank id -> "server_id device_id device_ip"
};

std::mutex g_mutex;

// Streams: the stub runs every batch at once and its stream syncs return at once, so a batch that took
// longer than a sync's timeout could never time out as it does on a device, where the batch is queued
// and the sync waits for it. We keep, per stream, the time the batches queued since its last sync took;
// aclrtSynchronizeStreamWithTimeout reports ACL_ERROR_RT_STREAM_SYNC_TIMEOUT when that exceeds it.
std::mutex g_stream_mutex;
std::map<aclrtStream, double> g_pending_ms;

void AddPending(aclrtStream stream, double ms) {
  std::lock_guard<std::mutex> lock(g_stream_mutex);
  g_pending_ms[stream] += ms;
}

double TakePending(aclrtStream stream) {
  std::lock_guard<std::mutex> lock(g_stream_mutex);
  const auto found = g_pending_ms.find(stream);
  if (found == g_pending_ms.end()) {
    return 0.0;
  }
  const double ms = found->second;
  g_pending_ms.erase(found);
  return ms;
}

std::string RegistryDir() {
  const char *dir = std::getenv("KVTEST_HCCL_DIR");
  if (dir != nullptr && dir[0] != '\0') {
    return dir;
  }
  return "/tmp/kvtest-hccl-" + std::to_string(getuid());
}

std::string FileName(const std::string &identity) {
  std::string out;
  for (char c : identity) {
    out += (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-') ? c : '_';
  }
  return RegistryDir() + "/" + out;
}

void Say(const std::string &text) {
  std::fprintf(stderr, "kvtest-hccl[%d]: %s\n", static_cast<int>(getpid()), text.c_str());
}

std::string AsText(const Json &value) {
  return value.is_string() ? value.get<std::string>() : value.dump();
}

bool ParseRankTable(const char *cluster, Comm *comm) {
  Json table = Json::parse(cluster, nullptr, false);
  if (table.is_discarded() || !table.contains("server_list")) {
    Say(std::string("rank table is not JSON with a server_list: ") + cluster);
    return false;
  }
  for (const auto &server : table["server_list"]) {
    const std::string server_id = server.contains("server_id") ? AsText(server["server_id"]) : "";
    if (!server.contains("device")) {
      continue;
    }
    for (const auto &device : server["device"]) {
      const uint32_t rank = static_cast<uint32_t>(std::stoul(AsText(device.at("rank_id"))));
      const std::string device_id = device.contains("device_id") ? AsText(device["device_id"]) : "";
      const std::string device_ip = device.contains("device_ip") ? AsText(device["device_ip"]) : "";
      comm->identity[rank] = server_id + " " + device_id + " " + device_ip;
    }
  }
  return comm->identity.count(comm->rank) == 1;
}

pid_t ReadPid(const std::string &path) {
  std::ifstream in(path);
  long pid = 0;
  if (in >> pid && pid > 0 && (kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM)) {
    return static_cast<pid_t>(pid);
  }
  return 0;
}

bool Publish(const std::string &identity) {
  const std::string dir = RegistryDir();
  (void)mkdir(dir.c_str(), 0700);
  const std::string path = FileName(identity);
  const pid_t other = ReadPid(path);
  if (other != 0 && other != getpid()) {
    Say("rank '" + identity + "' is already held by live process " + std::to_string(other) +
        ": two processes of a run share server_id, device_id and device_ip; give each its own device");
    return false;
  }
  const std::string tmp = path + ".tmp" + std::to_string(getpid());
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << getpid() << "\n";
    if (!out) {
      Say("cannot write " + tmp + ": " + std::strerror(errno));
      return false;
    }
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

pid_t PeerPid(const Comm *comm, uint32_t remote_rank) {
  const auto found = comm->identity.find(remote_rank);
  if (found == comm->identity.end()) {
    Say("rank " + std::to_string(remote_rank) + " is not in this communicator's rank table");
    return 0;
  }
  const std::string path = FileName(found->second);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (;;) {
    const pid_t pid = ReadPid(path);
    if (pid != 0) {
      return pid;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      Say("no live process for rank " + std::to_string(remote_rank) + " ('" + found->second + "') in " + path +
          " after 10 s: the peer is gone or never initialised its communicator");
      return 0;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

struct Fault {
  enum Kind { kNone, kFlip, kDrop } kind = kNone;
  bool get = true;
  bool put = true;
  long index = -1;  // -1: the middle descriptor of the batch
  long min = 2;     // batches with fewer descriptors are left alone: llm_datadist's control traffic
                    // (request, response, flags, cache-table reads) is one descriptor per batch
};

Fault ReadFault() {
  Fault fault;
  const char *spec = std::getenv("KVTEST_HCCL_FAULT");
  if (spec == nullptr || spec[0] == '\0') {
    return fault;
  }
  std::stringstream parts(spec);
  std::string part;
  while (std::getline(parts, part, ':')) {
    if (part == "flip") {
      fault.kind = Fault::kFlip;
    } else if (part == "drop") {
      fault.kind = Fault::kDrop;
    } else if (part == "get") {
      fault.put = false;
    } else if (part == "put") {
      fault.get = false;
    } else if (part.rfind("min=", 0) == 0) {
      fault.min = std::strtol(part.c_str() + 4, nullptr, 10);
    } else if (!part.empty() && std::isdigit(static_cast<unsigned char>(part[0]))) {
      fault.index = std::strtol(part.c_str(), nullptr, 10);
    } else {
      Say(std::string("ignoring KVTEST_HCCL_FAULT=") + spec + ": expected flip|drop[:get|:put][:INDEX][:min=N]");
      return Fault{};
    }
  }
  return fault;
}

// Moves every descriptor of one batch; `get` reads the remote into local memory, else writes it.
HcclResult Move(const Comm *comm, uint32_t remote_rank, HcclOneSideOpDesc *desc, uint32_t count, bool get) {
  if (count == 0) {
    return HCCL_SUCCESS;
  }
  if (comm == nullptr || desc == nullptr) {
    return HCCL_E_PTR;
  }
  const pid_t peer = PeerPid(comm, remote_rank);
  if (peer == 0) {
    return HCCL_E_NOT_FOUND;
  }
  if (std::getenv("KVTEST_HCCL_TRACE") != nullptr) {
    std::string sizes;
    for (uint32_t i = 0; i < count && i < 8; ++i) {
      sizes += (i ? "," : "") + std::to_string(desc[i].count);
    }
    Say(std::string(get ? "HcclBatchGet" : "HcclBatchPut") + " rank " + std::to_string(remote_rank) + " pid " +
        std::to_string(peer) + ": " + std::to_string(count) + " descriptors, bytes " + sizes);
  }
  const Fault fault = ReadFault();
  const bool faulty =
      fault.kind != Fault::kNone && (get ? fault.get : fault.put) && static_cast<long>(count) >= fault.min;
  const uint32_t chosen = fault.index >= 0 ? static_cast<uint32_t>(fault.index) : count / 2;
  const char *op = get ? "HcclBatchGet" : "HcclBatchPut";
  std::vector<iovec> local;
  std::vector<iovec> remote;
  for (uint32_t i = 0; i < count; ++i) {
    if (faulty && fault.kind == Fault::kDrop && i == chosen) {
      Say(std::string("fault: dropped descriptor ") + std::to_string(i) + " of " + std::to_string(count) + " in " + op);
      continue;
    }
    local.push_back({desc[i].localAddr, static_cast<size_t>(desc[i].count)});
    remote.push_back({desc[i].remoteAddr, static_cast<size_t>(desc[i].count)});
  }
  if (peer == getpid()) {  // a loopback link, as in hixl's one-process unit tests
    for (size_t i = 0; i < local.size(); ++i) {
      std::memmove(get ? local[i].iov_base : remote[i].iov_base, get ? remote[i].iov_base : local[i].iov_base,
                   local[i].iov_len);
    }
  } else {
    for (size_t first = 0; first < local.size(); first += IOV_MAX) {
      const size_t n = std::min<size_t>(IOV_MAX, local.size() - first);
      size_t want = 0;
      for (size_t i = first; i < first + n; ++i) {
        want += local[i].iov_len;
      }
      const ssize_t done = get ? process_vm_readv(peer, &local[first], n, &remote[first], n, 0)
                               : process_vm_writev(peer, &local[first], n, &remote[first], n, 0);
      if (done < 0 || static_cast<size_t>(done) != want) {
        Say(std::string(op) + " to pid " + std::to_string(peer) + " moved " + std::to_string(done) + " of " +
            std::to_string(want) + " bytes: " + std::strerror(errno));
        return errno == ESRCH ? HCCL_E_NOT_FOUND : HCCL_E_REMOTE;
      }
    }
  }
  if (faulty && fault.kind == Fault::kFlip && chosen < count && desc[chosen].count > 0) {
    auto *local_byte = static_cast<unsigned char *>(desc[chosen].localAddr);
    unsigned char flipped = static_cast<unsigned char>(*local_byte ^ 0xFFU);
    if (get) {
      *local_byte = flipped;
    } else {
      iovec from{&flipped, 1};
      iovec to{desc[chosen].remoteAddr, 1};
      if (peer == getpid()) {
        *static_cast<unsigned char *>(desc[chosen].remoteAddr) = flipped;
      } else {
        (void)process_vm_writev(peer, &from, 1, &to, 1, 0);
      }
    }
    Say(std::string("fault: flipped byte 0 of descriptor ") + std::to_string(chosen) + " of " +
        std::to_string(count) + " in " + op);
  }
  return HCCL_SUCCESS;
}

HcclResult CommInit(const char *cluster, uint32_t rank, HcclCommConfig *, HcclComm *comm) {
  if (cluster == nullptr || comm == nullptr) {
    return HCCL_E_PTR;
  }
  auto *ours = new Comm();
  ours->rank = rank;
  if (!ParseRankTable(cluster, ours)) {
    Say("rank " + std::to_string(rank) + " is missing from the rank table");
    delete ours;
    return HCCL_E_PARA;
  }
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!Publish(ours->identity[rank])) {
    delete ours;
    return HCCL_E_INTERNAL;
  }
  *comm = reinterpret_cast<HcclComm>(ours);
  return HCCL_SUCCESS;
}

HcclResult CommDestroy(HcclComm comm) {
  delete reinterpret_cast<Comm *>(comm);
  return HCCL_SUCCESS;
}

// The real HCCL swaps memory descriptors with the peer rank; hixl's stub hands a process its own back
// (tests/depends/llm_datadist/src/hccl_test_helper.h), which in two processes would make each side read
// its own cache table at the peer (hixl src/llm_datadist/link_mgr/comm_link_manager.cc, ExchangeMem).
// Ours swaps them through files under the registry: "<local>.to.<remote>.desc", written atomically,
// read (and removed) by the peer, who checks the writer is the process registered for that rank.
std::string DescFile(const std::string &from, const std::string &to) {
  return FileName(from) + ".to." + FileName(to).substr(RegistryDir().size() + 1) + ".desc";
}

HcclResult ExchangeMemDesc(HcclComm comm, uint32_t remote_rank, HcclMemDescs *local, int timeout,
                           HcclMemDescs *remote, uint32_t *actual) {
  auto *ours = reinterpret_cast<Comm *>(comm);
  if (ours == nullptr || local == nullptr || remote == nullptr || actual == nullptr) {
    return HCCL_E_PTR;
  }
  const auto found = ours->identity.find(remote_rank);
  if (found == ours->identity.end()) {
    Say("HcclExchangeMemDesc: rank " + std::to_string(remote_rank) + " is not in the rank table");
    return HCCL_E_PARA;
  }
  const std::string &me = ours->identity[ours->rank];
  const std::string out_path = DescFile(me, found->second);
  const std::string tmp = out_path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    const int32_t pid = getpid();
    out.write(reinterpret_cast<const char *>(&pid), sizeof(pid));
    out.write(reinterpret_cast<const char *>(&local->arrayLength), sizeof(local->arrayLength));
    out.write(reinterpret_cast<const char *>(local->array), sizeof(HcclMemDesc) * local->arrayLength);
    if (!out) {
      Say("HcclExchangeMemDesc: cannot write " + tmp);
      return HCCL_E_INTERNAL;
    }
  }
  if (std::rename(tmp.c_str(), out_path.c_str()) != 0) {
    return HCCL_E_INTERNAL;
  }
  const std::string in_path = DescFile(found->second, me);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout > 0 ? timeout : 30);
  for (;;) {
    std::ifstream in(in_path, std::ios::binary);
    int32_t writer = 0;
    uint32_t count = 0;
    if (in.read(reinterpret_cast<char *>(&writer), sizeof(writer)) &&
        in.read(reinterpret_cast<char *>(&count), sizeof(count)) && writer == PeerPid(ours, remote_rank)) {
      const uint32_t keep = std::min(count, remote->arrayLength);
      in.read(reinterpret_cast<char *>(remote->array), sizeof(HcclMemDesc) * keep);
      if (in) {
        (void)std::remove(in_path.c_str());
        remote->arrayLength = keep;
        *actual = keep;
        return HCCL_SUCCESS;
      }
    }
    if (std::chrono::steady_clock::now() > deadline) {
      Say("HcclExchangeMemDesc: no descriptors from rank " + std::to_string(remote_rank) + " ('" + found->second +
          "') within " + std::to_string(timeout) + " s");
      return HCCL_E_TIMEOUT;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

HcclResult Timed(HcclComm comm, uint32_t remote_rank, HcclOneSideOpDesc *desc, uint32_t count, aclrtStream stream,
                 bool get) {
  const auto start = std::chrono::steady_clock::now();
  const HcclResult result = Move(reinterpret_cast<Comm *>(comm), remote_rank, desc, count, get);
  AddPending(stream, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  return result;
}

HcclResult BatchGet(HcclComm comm, uint32_t remote_rank, HcclOneSideOpDesc *desc, uint32_t count, aclrtStream stream) {
  return Timed(comm, remote_rank, desc, count, stream, true);
}

HcclResult BatchPut(HcclComm comm, uint32_t remote_rank, HcclOneSideOpDesc *desc, uint32_t count, aclrtStream stream) {
  return Timed(comm, remote_rank, desc, count, stream, false);
}

int64_t g_mem_handle = 1;
HcclResult RegisterGlobalMem(CommMem *, void **handle) {
  if (handle != nullptr) {
    *handle = &g_mem_handle;
  }
  return HCCL_SUCCESS;
}
HcclResult Success0(void *) { return HCCL_SUCCESS; }
HcclResult Success2(HcclComm, void *) { return HCCL_SUCCESS; }
HcclResult Remap(HcclComm *, CommMem *, uint64_t, uint64_t) { return HCCL_SUCCESS; }
HcclResult Prepare(HcclComm, HcclPrepareConfig *, int32_t) { return HCCL_SUCCESS; }

void *Ours(const char *name) {
  static const std::map<std::string, void *> table = {
      {"HcclCommInitClusterInfoMemConfig", reinterpret_cast<void *>(&CommInit)},
      {"HcclCommDestroy", reinterpret_cast<void *>(&CommDestroy)},
      {"HcclExchangeMemDesc", reinterpret_cast<void *>(&ExchangeMemDesc)},
      {"HcclBatchGet", reinterpret_cast<void *>(&BatchGet)},
      {"HcclBatchPut", reinterpret_cast<void *>(&BatchPut)},
      {"HcclRemapRegistedMemory", reinterpret_cast<void *>(&Remap)},
      {"HcclRegisterGlobalMem", reinterpret_cast<void *>(&RegisterGlobalMem)},
      {"HcclDeregisterGlobalMem", reinterpret_cast<void *>(&Success0)},
      {"HcclCommBindMem", reinterpret_cast<void *>(&Success2)},
      {"HcclCommUnbindMem", reinterpret_cast<void *>(&Success2)},
      {"HcclCommPrepare", reinterpret_cast<void *>(&Prepare)},
  };
  const auto found = name == nullptr ? table.end() : table.find(name);
  return found == table.end() ? nullptr : found->second;
}

using DlsymFn = void *(*)(void *, const char *);

DlsymFn StubDlsym() {
  static DlsymFn stub = []() -> DlsymFn {
    void *base = dlopen("libllm_datadist_base.so", RTLD_NOW | RTLD_NOLOAD);
    return base == nullptr ? nullptr : reinterpret_cast<DlsymFn>(dlsym(base, "__wrap_dlsym"));
  }();
  return stub;
}

__attribute__((constructor)) void AllowPeers() {
  // Under Yama ptrace_scope=1 a peer may read our memory only if we say so.
  (void)prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
}

}  // namespace

extern "C" KV_EXPORT void *__wrap_dlsym(void *handle, const char *name) {
  void *ours = Ours(name);
  if (ours != nullptr) {
    return ours;
  }
  const DlsymFn stub = StubDlsym();
  return stub != nullptr && stub != &__wrap_dlsym ? stub(handle, name) : dlsym(handle, name);
}

// The device network config: hixl's mock maps /etc/hccn.conf to /tmp/hccn.conf, a copy of a test file
// whose path is baked into the build (so it is gone once the build folder moves into the cache) and that
// every process of the stub world deletes at exit. Ours: $KVTEST_HCCN_CONF when set, else "no such file",
// on which the real code asks `hccn_tool -i N -ip -g` (hixl src/hixl/common/hixl_utils.cc GetDeviceIp):
// kvtest's hccn_tool shim on PATH answers, so the real code and kvtest agree on every device IP.
using RealpathFn = char *(*)(const char *, char *);

extern "C" KV_EXPORT char *__wrap_realpath(const char *path, char *resolved) {
  if (path != nullptr && std::strcmp(path, "/etc/hccn.conf") == 0) {
    const char *conf = std::getenv("KVTEST_HCCN_CONF");
    if (conf == nullptr || conf[0] == '\0') {
      errno = ENOENT;
      return nullptr;
    }
    path = conf;
  }
  static RealpathFn stub = []() -> RealpathFn {
    void *base = dlopen("libllm_datadist_base.so", RTLD_NOW | RTLD_NOLOAD);
    return base == nullptr ? nullptr : reinterpret_cast<RealpathFn>(dlsym(base, "__wrap_realpath"));
  }();
  return stub != nullptr && stub != &__wrap_realpath ? stub(path, resolved) : realpath(path, resolved);
}

// Devices: the stub's aclrtGetDevice always answers 0, so two processes on devices 0 and 1 of one host
// build rank tables in which both are device 0 (hixl src/llm_datadist/adxl/channel_msg_handler.cc then
// refuses "connect with self device"). Ours remembers the device the process set, as the runtime does.
namespace {
std::atomic<int32_t> g_device{-1};

template <typename Fn>
Fn StubAcl(const char *name) {
  void *acl = dlopen("libascendcl_stub.so", RTLD_NOW | RTLD_NOLOAD);
  return acl == nullptr ? nullptr : reinterpret_cast<Fn>(dlsym(acl, name));
}
}  // namespace

extern "C" KV_EXPORT aclError aclrtSetDevice(int32_t device) {
  using Fn = aclError (*)(int32_t);
  static Fn stub = StubAcl<Fn>("aclrtSetDevice");
  const aclError ret = stub != nullptr && stub != &aclrtSetDevice ? stub(device) : ACL_ERROR_NONE;
  if (ret == ACL_ERROR_NONE) {
    g_device.store(device);
  }
  return ret;
}

extern "C" KV_EXPORT aclError aclrtGetDevice(int32_t *device) {
  using Fn = aclError (*)(int32_t *);
  static Fn stub = StubAcl<Fn>("aclrtGetDevice");
  const aclError ret = stub != nullptr && stub != &aclrtGetDevice ? stub(device) : ACL_ERROR_NONE;
  if (ret == ACL_ERROR_NONE && device != nullptr && g_device.load() >= 0) {
    *device = g_device.load();
  }
  return ret;
}

extern "C" KV_EXPORT aclError aclrtSynchronizeStreamWithTimeout(aclrtStream stream, int32_t timeout) {
  using Fn = aclError (*)(aclrtStream, int32_t);
  static Fn stub = StubAcl<Fn>("aclrtSynchronizeStreamWithTimeout");
  const aclError ret =
      stub != nullptr && stub != &aclrtSynchronizeStreamWithTimeout ? stub(stream, timeout) : ACL_ERROR_NONE;
  const double pending = TakePending(stream);
  if (ret == ACL_ERROR_NONE && timeout > 0 && pending > timeout) {
    Say("aclrtSynchronizeStreamWithTimeout: the batches queued on the stream took " + std::to_string(pending) +
        " ms, more than the timeout of " + std::to_string(timeout) + " ms");
    return ACL_ERROR_RT_STREAM_SYNC_TIMEOUT;
  }
  return ret;
}

extern "C" KV_EXPORT aclError aclrtSynchronizeStream(aclrtStream stream) {
  using Fn = aclError (*)(aclrtStream);
  static Fn stub = StubAcl<Fn>("aclrtSynchronizeStream");
  (void)TakePending(stream);
  return stub != nullptr && stub != &aclrtSynchronizeStream ? stub(stream) : ACL_ERROR_NONE;
}

extern "C" KV_EXPORT int kvtest_hccl_transport_version() { return 1; }
