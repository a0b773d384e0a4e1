// Slurm node lists and counts as `tandem launch` reads them (tools/slurm.h,
// header-only for these tests: the test executables do not link tools/).
#include "support/testing.h"
#include "tools/slurm.h"

using namespace tandem;
using tandem::tools::expand_slurm_nodelist;
using tandem::tools::first_slurm_host;
using tandem::tools::parse_slurm_count;
using Hosts = std::vector<std::string>;

TEST_CASE("Slurm node lists expand in order", "[slurm]") {
  REQUIRE(expand_slurm_nodelist("node7") == Hosts{"node7"});
  REQUIRE(expand_slurm_nodelist("a,b,c") == Hosts{"a", "b", "c"});
  REQUIRE(expand_slurm_nodelist("host[1-3,5]") == Hosts{"host1", "host2", "host3", "host5"});
  REQUIRE(expand_slurm_nodelist("gpu[08-10]") == Hosts{"gpu08", "gpu09", "gpu10"});  // width of the low bound
  REQUIRE(expand_slurm_nodelist("n[001-002],login2") == Hosts{"n001", "n002", "login2"});
  REQUIRE(expand_slurm_nodelist("x[1-2]-ib,y[7]") == Hosts{"x1-ib", "x2-ib", "y7"});
  REQUIRE(expand_slurm_nodelist("r[1-2]n[1-2]") == Hosts{"r1n1", "r1n2", "r2n1", "r2n2"});
  REQUIRE(expand_slurm_nodelist("10.0.0.[1-2]") == Hosts{"10.0.0.1", "10.0.0.2"});
  REQUIRE(expand_slurm_nodelist("node-a.cluster.org") == Hosts{"node-a.cluster.org"});
  REQUIRE(expand_slurm_nodelist("gpu[1-100]").size() == 100);
}

TEST_CASE("the first host of a Slurm node list serves the store", "[slurm]") {
  REQUIRE(first_slurm_host("host[1-3,5]") == "host1");
  REQUIRE(first_slurm_host("gpu[003-004],cpu1") == "gpu003");
  REQUIRE(first_slurm_host("login,gpu[1-2]") == "login");
}

TEST_CASE("malformed Slurm node lists are user errors that name the list", "[slurm]") {
  for (const char* bad : {"", "a,,b", "host[1-3", "host1-3]", "host[]", "host[3-1]", "host[a-b]", "host[1-2,]",
                          "host[[1-2]]", "host[1:2]", "a b", "host[1-99999999]", "[1-2]x[1-1000]y[1-1000]"}) {
    INFO(bad);
    REQUIRE_THROWS_AS(expand_slurm_nodelist(bad), UserError);
    try {
      expand_slurm_nodelist(bad);
    } catch (const UserError& e) {
      REQUIRE(std::string(e.what()).find(fmt::format("'{}'", bad)) != std::string::npos);
    }
  }
}

TEST_CASE("Slurm counts: plain and the compressed per-node form", "[slurm]") {
  REQUIRE(parse_slurm_count("SLURM_NNODES", "4") == 4);
  REQUIRE(parse_slurm_count("SLURM_NTASKS_PER_NODE", "8(x2)") == 8);
  for (const char* bad : {"", "x", "-1", "4x", "(x2)", "12345678901"}) {
    INFO(bad);
    REQUIRE_THROWS_AS(parse_slurm_count("SLURM_NNODES", bad), UserError);
  }
}
