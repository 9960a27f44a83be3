/*
 * nxnw's Thrift1 gateway service: HBase's Thrift1 "Hbase" service plus one batch write that
 * Thrift1 lacks. Built with happybase's Hbase.thrift on the include path: the Java side by
 * `thrift --gen java -I <happybase>` at install (nxnw/services/hbase.py), the Python side by
 * thriftpy2 at run time (datastore/engines/hbase.py).
 *
 * Because NxnwHbase extends Hbase, every Thrift1 client (happybase) keeps working on the same
 * port: the added method is one more name in the same processor.
 */

include "Hbase.thrift"

namespace java nxnw.hbase.generated
namespace py nxnw_hbase

/**
 * A BatchMutation with its own timestamp: every cell the row's mutations write, and every
 * delete marker they place, is at `timestamp` (as mutateRowsTs does for a whole call).
 */
struct BatchMutationTs {
  1: Hbase.Text row,
  2: list<Hbase.Mutation> mutations,
  3: i64 timestamp
}

service NxnwHbase extends Hbase.Hbase {
  /**
   * mutateRowsTs with one timestamp per row instead of one per call: each row's mutations
   * mean what they mean in mutateRowsTs at that row's timestamp. All the rows' Puts go to
   * HBase as one batch, then all their Deletes as another (mutateRowsTs's order). Not atomic
   * across rows, like mutateRowsTs.
   *
   * @param tableName name of the table
   * @param rowBatches rows, each with its mutations and its timestamp
   */
  void mutateRowsTsEach(1: Hbase.Text tableName, 2: list<BatchMutationTs> rowBatches)
    throws (1: Hbase.IOError io, 2: Hbase.IllegalArgument ia)
}
