/*
 * HBase's Thrift1 gateway ("Hbase" service), the one happybase speaks, for the local HBase
 * that nxnw's tests and demo run, plus one batch write of nxnw's own (the "NxnwHbase"
 * service, which extends "Hbase").
 *
 * Why this file exists: the hbase-thrift module is not served by the package registry this
 * project may use, while hbase-server, hbase-client and libthrift are. So nxnw builds the
 * gateway itself: the Thrift compiler (Debian's thrift-compiler) generates the service
 * interfaces from the Hbase.thrift IDL that happybase ships and from nxnw_hbase.thrift next
 * to this file, and this class implements them on the public HBase client API, with the
 * semantics of HBase's own Thrift1 handler (column names "family:qualifier", *Ts calls write
 * cells at the given timestamp and read with time range [0, ts), deletes at a timestamp are
 * DeleteColumn markers, scanner ids valid on every connection). Binary protocol, plain
 * (buffered) socket transport, one thread per connection: happybase's defaults.
 *
 * nxnw's addition, mutateRowsTsEach: mutateRowsTs with a timestamp per row rather than per
 * call, so that a snapshot load (every row at its own write time) is one HBase batch instead
 * of one call per row. Each row's mutations mean exactly what they mean in mutateRowsTs.
 *
 * What it must never do: answer a call it does not implement with anything but an IOError
 * naming the call, or swallow an HBase error (each one goes back as IOError or
 * IllegalArgument with HBase's message).
 *
 * Not implemented (IOError): getRowOrBefore (removed in HBase 2) and getRegionInfo.
 * Scanners left open by a client that went away are closed after SCANNER_IDLE_MS.
 *
 * Run as `Thrift1Gateway BIND_HOST PORT` against the cluster named by hbase-site.xml on the
 * classpath (a real cluster: its hbase.zookeeper.quorum is all the gateway needs), or as
 * `Thrift1Gateway --local-cluster BIND_HOST PORT` to also run HBase itself in this JVM in
 * standalone mode (ZooKeeper, master, region server). In that mode SIGTERM stops the gateway,
 * then shuts the cluster down cleanly; if the cluster exits on its own, the JVM exits with
 * status 1 so that whoever started it sees the failure.
 *
 * The stock surface. `--no-extension` serves PORT with the plain "Hbase" processor: every
 * Thrift1 call as before, and mutateRowsTsEach answered as HBase's own Thrift server answers a
 * name it does not know (TApplicationException UNKNOWN_METHOD). `--stock-port STOCK_PORT`
 * serves that stock surface on a second port as well, from the same handler (one HBase
 * connection, one scanner table), so one JVM lets clients be tested both ways.
 */
package nxnw.hbase;

import java.io.File;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hbase.Cell;
import org.apache.hadoop.hbase.CellUtil;
import org.apache.hadoop.hbase.HBaseConfiguration;
import org.apache.hadoop.hbase.HConstants;
import org.apache.hadoop.hbase.HRegionLocation;
import org.apache.hadoop.hbase.LocalHBaseCluster;
import org.apache.hadoop.hbase.ServerName;
import org.apache.hadoop.hbase.TableName;
import org.apache.hadoop.hbase.client.Admin;
import org.apache.hadoop.hbase.client.Append;
import org.apache.hadoop.hbase.client.CheckAndMutate;
import org.apache.hadoop.hbase.client.ColumnFamilyDescriptor;
import org.apache.hadoop.hbase.client.ColumnFamilyDescriptorBuilder;
import org.apache.hadoop.hbase.client.Connection;
import org.apache.hadoop.hbase.client.ConnectionFactory;
import org.apache.hadoop.hbase.client.Delete;
import org.apache.hadoop.hbase.client.Durability;
import org.apache.hadoop.hbase.client.Get;
import org.apache.hadoop.hbase.client.Increment;
import org.apache.hadoop.hbase.client.OperationWithAttributes;
import org.apache.hadoop.hbase.client.Put;
import org.apache.hadoop.hbase.client.RegionInfo;
import org.apache.hadoop.hbase.client.RegionLocator;
import org.apache.hadoop.hbase.client.Result;
import org.apache.hadoop.hbase.client.ResultScanner;
import org.apache.hadoop.hbase.client.Scan;
import org.apache.hadoop.hbase.client.Table;
import org.apache.hadoop.hbase.client.TableDescriptor;
import org.apache.hadoop.hbase.client.TableDescriptorBuilder;
import org.apache.hadoop.hbase.filter.ParseFilter;
import org.apache.hadoop.hbase.filter.PrefixFilter;
import org.apache.hadoop.hbase.filter.WhileMatchFilter;
import org.apache.hadoop.hbase.io.compress.Compression;
import org.apache.hadoop.hbase.master.HMaster;
import org.apache.hadoop.hbase.regionserver.BloomType;
import org.apache.hadoop.hbase.regionserver.HRegionServer;
import org.apache.hadoop.hbase.thrift.generated.AlreadyExists;
import org.apache.hadoop.hbase.thrift.generated.BatchMutation;
import org.apache.hadoop.hbase.thrift.generated.ColumnDescriptor;
import org.apache.hadoop.hbase.thrift.generated.Hbase;
import org.apache.hadoop.hbase.thrift.generated.IOError;
import org.apache.hadoop.hbase.thrift.generated.IllegalArgument;
import org.apache.hadoop.hbase.thrift.generated.Mutation;
import org.apache.hadoop.hbase.thrift.generated.TAppend;
import org.apache.hadoop.hbase.thrift.generated.TCell;
import org.apache.hadoop.hbase.thrift.generated.TColumn;
import org.apache.hadoop.hbase.thrift.generated.TIncrement;
import org.apache.hadoop.hbase.thrift.generated.TRegionInfo;
import org.apache.hadoop.hbase.thrift.generated.TRowResult;
import org.apache.hadoop.hbase.thrift.generated.TScan;
import org.apache.hadoop.hbase.util.Bytes;
import org.apache.hadoop.hbase.zookeeper.MiniZooKeeperCluster;
import org.apache.hadoop.metrics2.lib.DefaultMetricsSystem;
import org.apache.thrift.TProcessor;
import org.apache.thrift.protocol.TBinaryProtocol;
import org.apache.thrift.server.TServer;
import org.apache.thrift.server.TThreadPoolServer;
import org.apache.thrift.transport.TServerSocket;
import org.apache.thrift.transport.TTransportFactory;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import nxnw.hbase.generated.BatchMutationTs;
import nxnw.hbase.generated.NxnwHbase;

public final class Thrift1Gateway implements NxnwHbase.Iface {
  private static final Logger LOG = LoggerFactory.getLogger(Thrift1Gateway.class);
  private static final long SCANNER_IDLE_MS = 10 * 60 * 1000L;
  private static final byte REGION_INFO_VERSION = 1;

  /** One open scanner: the table it reads, whether rows come back column-sorted, last use. */
  private static final class OpenScanner {
    final Table table;
    final ResultScanner scanner;
    final boolean sortColumns;
    volatile long lastUsed = System.currentTimeMillis();

    OpenScanner(Table table, ResultScanner scanner, boolean sortColumns) {
      this.table = table;
      this.scanner = scanner;
      this.sortColumns = sortColumns;
    }

    void close() {
      scanner.close();
      try {
        table.close();
      } catch (IOException e) {
        LOG.warn("closing the table of a scanner failed", e);
      }
    }
  }

  @FunctionalInterface
  private interface HBaseCall<T> {
    T call() throws IOException;
  }

  private final Connection connection;
  private final Map<Integer, OpenScanner> scanners = new ConcurrentHashMap<>();
  private final AtomicInteger nextScannerId = new AtomicInteger();

  Thrift1Gateway(Connection connection) {
    this.connection = connection;
  }

  // ---- error mapping: every HBase failure goes back to the client with HBase's message ----

  private static String describe(Throwable t) {
    String message = t.getMessage();
    return t.getClass().getName() + (message == null ? "" : ": " + message);
  }

  private static IOError ioError(Throwable t) {
    IOError error = new IOError(describe(t));
    error.initCause(t);
    return error;
  }

  private static IllegalArgument illegalArgument(Throwable t) {
    IllegalArgument error = new IllegalArgument(describe(t));
    error.initCause(t);
    return error;
  }

  /** Run an HBase call; any failure becomes an IOError. */
  private static <T> T io(HBaseCall<T> call) throws IOError {
    try {
      return call.call();
    } catch (IOException | RuntimeException e) {
      throw ioError(e);
    }
  }

  /** Run an HBase call whose bad arguments are IllegalArgument, other failures IOError. */
  private static <T> T ioOrArg(HBaseCall<T> call) throws IOError, IllegalArgument {
    try {
      return call.call();
    } catch (IllegalArgumentException e) {
      throw illegalArgument(e);
    } catch (IOException | RuntimeException e) {
      throw ioError(e);
    }
  }

  // ---- conversions ----

  private static byte[] bytes(ByteBuffer buffer) {
    if (buffer == null) {
      return null;
    }
    ByteBuffer view = buffer.duplicate();
    byte[] out = new byte[view.remaining()];
    view.get(out);
    return out;
  }

  private static TableName tableName(ByteBuffer name) {
    return TableName.valueOf(bytes(name));
  }

  /** "family:qualifier" -> {family, qualifier}; "family" -> {family}. */
  private static byte[][] column(ByteBuffer column) {
    byte[] raw = bytes(column);
    if (raw == null) {
      throw new IllegalArgumentException("column name is missing");
    }
    return CellUtil.parseColumn(raw);
  }

  private static byte[] qualifierOf(byte[][] famAndQf) {
    return famAndQf.length == 1 ? HConstants.EMPTY_BYTE_ARRAY : famAndQf[1];
  }

  private static void addAttributes(OperationWithAttributes op, Map<ByteBuffer, ByteBuffer> attributes) {
    if (attributes == null) {
      return;
    }
    for (Map.Entry<ByteBuffer, ByteBuffer> attribute : attributes.entrySet()) {
      op.setAttribute(Bytes.toString(bytes(attribute.getKey())), bytes(attribute.getValue()));
    }
  }

  private static void addColumns(Get get, List<ByteBuffer> columns) {
    if (columns == null) {
      return;
    }
    for (ByteBuffer c : columns) {
      byte[][] famAndQf = column(c);
      if (famAndQf.length == 1) {
        get.addFamily(famAndQf[0]);
      } else {
        get.addColumn(famAndQf[0], famAndQf[1]);
      }
    }
  }

  private static void addColumns(Scan scan, List<ByteBuffer> columns) {
    if (columns == null) {
      return;
    }
    for (ByteBuffer c : columns) {
      byte[][] famAndQf = column(c);
      if (famAndQf.length == 1) {
        scan.addFamily(famAndQf[0]);
      } else {
        scan.addColumn(famAndQf[0], famAndQf[1]);
      }
    }
  }

  private static TCell cell(Cell c) {
    return new TCell(ByteBuffer.wrap(CellUtil.cloneValue(c)), c.getTimestamp());
  }

  private static List<TCell> cells(Cell[] in) {
    List<TCell> out = new ArrayList<>();
    if (in != null) {
      for (Cell c : in) {
        out.add(cell(c));
      }
    }
    return out;
  }

  private static ByteBuffer columnName(Cell c) {
    return ByteBuffer.wrap(CellUtil.makeColumn(CellUtil.cloneFamily(c), CellUtil.cloneQualifier(c)));
  }

  private static List<TRowResult> rows(Result[] in, boolean sortColumns) {
    List<TRowResult> out = new ArrayList<>();
    for (Result r : in) {
      if (r == null || r.isEmpty()) {
        continue;
      }
      TRowResult row = new TRowResult();
      row.setRow(r.getRow());
      if (sortColumns) {
        List<TColumn> sorted = new ArrayList<>();
        for (Cell c : r.rawCells()) {
          sorted.add(new TColumn(columnName(c), cell(c)));
        }
        row.setSortedColumns(sorted);
      } else {
        Map<ByteBuffer, TCell> columns = new LinkedHashMap<>();
        for (Cell c : r.rawCells()) {
          columns.put(columnName(c), cell(c));
        }
        row.setColumns(columns);
      }
      out.add(row);
    }
    return out;
  }

  private static ColumnDescriptor describeFamily(ColumnFamilyDescriptor family) {
    ColumnDescriptor col = new ColumnDescriptor();
    col.setName(Bytes.add(family.getName(), new byte[] {':'}));
    col.setMaxVersions(family.getMaxVersions());
    col.setCompression(family.getCompressionType().toString());
    col.setInMemory(family.isInMemory());
    col.setBloomFilterType(family.getBloomFilterType().toString());
    col.setBlockCacheEnabled(family.isBlockCacheEnabled());
    col.setTimeToLive(family.getTimeToLive());
    return col;
  }

  private static ColumnFamilyDescriptor familyFrom(ColumnDescriptor col) {
    byte[] name = bytes(col.bufferForName());
    if (name == null || name.length == 0) {
      throw new IllegalArgumentException("column family name is missing");
    }
    byte[] family = CellUtil.parseColumn(name)[0];
    ColumnFamilyDescriptorBuilder builder = ColumnFamilyDescriptorBuilder.newBuilder(family)
        .setMaxVersions(col.getMaxVersions())
        .setCompressionType(Compression.Algorithm.valueOf(col.getCompression().toUpperCase()))
        .setInMemory(col.isInMemory())
        .setBlockCacheEnabled(col.isBlockCacheEnabled())
        .setBloomFilterType(BloomType.valueOf(col.getBloomFilterType().toUpperCase()));
    if (col.getTimeToLive() > 0) {
      builder.setTimeToLive(col.getTimeToLive());
    }
    return builder.build();
  }

  private static Durability durability(Mutation m) {
    return m.isWriteToWAL() ? Durability.SYNC_WAL : Durability.SKIP_WAL;
  }

  // ---- tables ----

  @Override
  public void enableTable(ByteBuffer name) throws IOError {
    io(() -> {
      try (Admin admin = connection.getAdmin()) {
        admin.enableTable(tableName(name));
      }
      return null;
    });
  }

  @Override
  public void disableTable(ByteBuffer name) throws IOError {
    io(() -> {
      try (Admin admin = connection.getAdmin()) {
        admin.disableTable(tableName(name));
      }
      return null;
    });
  }

  @Override
  public boolean isTableEnabled(ByteBuffer name) throws IOError {
    return io(() -> {
      try (Admin admin = connection.getAdmin()) {
        return admin.isTableEnabled(tableName(name));
      }
    });
  }

  private void compact(ByteBuffer nameOrRegion, boolean major) throws IOError {
    io(() -> {
      byte[] raw = bytes(nameOrRegion);
      try (Admin admin = connection.getAdmin()) {
        boolean isTable;
        try {
          isTable = admin.tableExists(TableName.valueOf(raw));
        } catch (IllegalArgumentException notATableName) {
          isTable = false;
        }
        if (isTable && major) {
          admin.majorCompact(TableName.valueOf(raw));
        } else if (isTable) {
          admin.compact(TableName.valueOf(raw));
        } else if (major) {
          admin.majorCompactRegion(raw);
        } else {
          admin.compactRegion(raw);
        }
      }
      return null;
    });
  }

  @Override
  public void compact(ByteBuffer tableNameOrRegionName) throws IOError {
    compact(tableNameOrRegionName, false);
  }

  @Override
  public void majorCompact(ByteBuffer tableNameOrRegionName) throws IOError {
    compact(tableNameOrRegionName, true);
  }

  @Override
  public List<ByteBuffer> getTableNames() throws IOError {
    return io(() -> {
      List<ByteBuffer> out = new ArrayList<>();
      try (Admin admin = connection.getAdmin()) {
        for (TableName name : admin.listTableNames()) {
          out.add(ByteBuffer.wrap(name.getName()));
        }
      }
      return out;
    });
  }

  @Override
  public Map<ByteBuffer, ColumnDescriptor> getColumnDescriptors(ByteBuffer name) throws IOError {
    return io(() -> {
      Map<ByteBuffer, ColumnDescriptor> out = new LinkedHashMap<>();
      try (Admin admin = connection.getAdmin()) {
        TableDescriptor descriptor = admin.getDescriptor(tableName(name));
        for (ColumnFamilyDescriptor family : descriptor.getColumnFamilies()) {
          ColumnDescriptor col = describeFamily(family);
          out.put(col.bufferForName(), col);
        }
      }
      return out;
    });
  }

  @Override
  public List<TRegionInfo> getTableRegions(ByteBuffer name) throws IOError {
    return io(() -> {
      List<TRegionInfo> out = new ArrayList<>();
      try (RegionLocator locator = connection.getRegionLocator(tableName(name))) {
        for (HRegionLocation location : locator.getAllRegionLocations()) {
          RegionInfo info = location.getRegion();
          TRegionInfo region = new TRegionInfo();
          region.setStartKey(info.getStartKey());
          region.setEndKey(info.getEndKey());
          region.setId(info.getRegionId());
          region.setName(info.getRegionName());
          region.setVersion(REGION_INFO_VERSION);
          ServerName server = location.getServerName();
          if (server != null) {
            region.setServerName(Bytes.toBytes(server.getHostname()));
            region.setPort(server.getPort());
          }
          out.add(region);
        }
      }
      return out;
    });
  }

  @Override
  public void createTable(ByteBuffer name, List<ColumnDescriptor> families)
      throws IOError, IllegalArgument, AlreadyExists {
    TableName table;
    TableDescriptorBuilder builder;
    try {
      table = tableName(name);
      builder = TableDescriptorBuilder.newBuilder(table);
      if (families == null || families.isEmpty()) {
        throw new IllegalArgumentException("table " + table + " needs at least one column family");
      }
      for (ColumnDescriptor col : families) {
        builder.setColumnFamily(familyFrom(col));
      }
    } catch (IllegalArgumentException e) {
      throw illegalArgument(e);
    }
    try (Admin admin = connection.getAdmin()) {
      if (admin.tableExists(table)) {
        throw new AlreadyExists("table " + table + " already exists");
      }
      admin.createTable(builder.build());
    } catch (org.apache.hadoop.hbase.TableExistsException e) {
      throw new AlreadyExists("table " + table + " already exists");
    } catch (IllegalArgumentException e) {
      throw illegalArgument(e);
    } catch (IOException | RuntimeException e) {
      throw ioError(e);
    }
  }

  @Override
  public void deleteTable(ByteBuffer name) throws IOError {
    io(() -> {
      TableName table = tableName(name);
      try (Admin admin = connection.getAdmin()) {
        if (!admin.tableExists(table)) {
          throw new IOException("table " + table + " does not exist");
        }
        admin.deleteTable(table);
      }
      return null;
    });
  }

  // ---- reads ----

  private List<TCell> getCells(ByteBuffer name, ByteBuffer row, ByteBuffer col, long timestamp,
      int versions, Map<ByteBuffer, ByteBuffer> attributes) throws IOError {
    return io(() -> {
      Get get = new Get(bytes(row));
      addAttributes(get, attributes);
      byte[][] famAndQf = column(col);
      if (famAndQf.length == 1) {
        get.addFamily(famAndQf[0]);
      } else {
        get.addColumn(famAndQf[0], famAndQf[1]);
      }
      if (timestamp != HConstants.LATEST_TIMESTAMP) {
        get.setTimeRange(0, timestamp);
      }
      get.readVersions(versions);
      try (Table table = connection.getTable(tableName(name))) {
        return cells(table.get(get).rawCells());
      }
    });
  }

  @Override
  public List<TCell> get(ByteBuffer name, ByteBuffer row, ByteBuffer col, Map<ByteBuffer, ByteBuffer> attributes)
      throws IOError {
    return getCells(name, row, col, HConstants.LATEST_TIMESTAMP, 1, attributes);
  }

  @Override
  public List<TCell> getVer(ByteBuffer name, ByteBuffer row, ByteBuffer col, int numVersions,
      Map<ByteBuffer, ByteBuffer> attributes) throws IOError {
    return getCells(name, row, col, HConstants.LATEST_TIMESTAMP, numVersions, attributes);
  }

  @Override
  public List<TCell> getVerTs(ByteBuffer name, ByteBuffer row, ByteBuffer col, long timestamp, int numVersions,
      Map<ByteBuffer, ByteBuffer> attributes) throws IOError {
    return getCells(name, row, col, timestamp, numVersions, attributes);
  }

  @Override
  public List<TRowResult> getRow(ByteBuffer name, ByteBuffer row, Map<ByteBuffer, ByteBuffer> attributes)
      throws IOError {
    return getRowsWithColumnsTs(name, Collections.singletonList(row), null, HConstants.LATEST_TIMESTAMP, attributes);
  }

  @Override
  public List<TRowResult> getRowWithColumns(ByteBuffer name, ByteBuffer row, List<ByteBuffer> columns,
      Map<ByteBuffer, ByteBuffer> attributes) throws IOError {
    return getRowsWithColumnsTs(name, Collections.singletonList(row), columns, HConstants.LATEST_TIMESTAMP,
        attributes);
  }

  @Override
  public List<TRowResult> getRowTs(ByteBuffer name, ByteBuffer row, long timestamp,
      Map<ByteBuffer, ByteBuffer> attributes) throws IOError {
    return getRowsWithColumnsTs(name, Collections.singletonList(row), null, timestamp, attributes);
  }

  @Override
  public List<TRowResult> getRowWithColumnsTs(ByteBuffer name, ByteBuffer row, List<ByteBuffer> columns,
      long timestamp, Map<ByteBuffer, ByteBuffer> attributes) throws IOError {
    return getRowsWithColumnsTs(name, Collections.singletonList(row), columns, timestamp, attributes);
  }

  @Override
  public List<TRowResult> getRows(ByteBuffer name, List<ByteBuffer> rows, Map<ByteBuffer, ByteBuffer> attributes)
      throws IOError {
    return getRowsWithColumnsTs(name, rows, null, HConstants.LATEST_TIMESTAMP, attributes);
  }

  @Override
  public List<TRowResult> getRowsWithColumns(ByteBuffer name, List<ByteBuffer> rows, List<ByteBuffer> columns,
      Map<ByteBuffer, ByteBuffer> attributes) throws IOError {
    return getRowsWithColumnsTs(name, rows, columns, HConstants.LATEST_TIMESTAMP, attributes);
  }

  @Override
  public List<TRowResult> getRowsTs(ByteBuffer name, List<ByteBuffer> rows, long timestamp,
      Map<ByteBuffer, ByteBuffer> attributes) throws IOError {
    return getRowsWithColumnsTs(name, rows, null, timestamp, attributes);
  }

  @Override
  public List<TRowResult> getRowsWithColumnsTs(ByteBuffer name, List<ByteBuffer> rows, List<ByteBuffer> columns,
      long timestamp, Map<ByteBuffer, ByteBuffer> attributes) throws IOError {
    return io(() -> {
      List<Get> gets = new ArrayList<>();
      for (ByteBuffer row : rows) {
        Get get = new Get(bytes(row));
        addAttributes(get, attributes);
        addColumns(get, columns);
        get.setTimeRange(0, timestamp);
        gets.add(get);
      }
      try (Table table = connection.getTable(tableName(name))) {
        return rows(table.get(gets), false);
      }
    });
  }

  // ---- writes ----

  /** The Put and Delete that one row's mutations amount to, at one timestamp. */
  private static final class RowChange {
    Put put;
    final Delete delete;

    RowChange(byte[] row, List<Mutation> mutations, long timestamp, Map<ByteBuffer, ByteBuffer> attributes) {
      delete = new Delete(row);
      addAttributes(delete, attributes);
      for (Mutation m : mutations) {
        byte[][] famAndQf = column(m.bufferForColumn());
        if (m.isIsDelete()) {
          if (famAndQf.length == 1) {
            delete.addFamily(famAndQf[0], timestamp);
          } else {
            delete.addColumns(famAndQf[0], famAndQf[1], timestamp);
          }
          delete.setDurability(durability(m));
        } else {
          if (put == null) {
            put = new Put(row, timestamp);
            addAttributes(put, attributes);
          }
          byte[] value = m.isSetValue() ? bytes(m.bufferForValue()) : HConstants.EMPTY_BYTE_ARRAY;
          put.addColumn(famAndQf[0], qualifierOf(famAndQf), timestamp, value);
          put.setDurability(durability(m));
        }
      }
    }
  }

  @Override
  public void mutateRow(ByteBuffer name, ByteBuffer row, List<Mutation> mutations,
      Map<ByteBuffer, ByteBuffer> attributes) throws IOError, IllegalArgument {
    mutateRowTs(name, row, mutations, HConstants.LATEST_TIMESTAMP, attributes);
  }

  @Override
  public void mutateRowTs(ByteBuffer name, ByteBuffer row, List<Mutation> mutations, long timestamp,
      Map<ByteBuffer, ByteBuffer> attributes) throws IOError, IllegalArgument {
    BatchMutation batch = new BatchMutation(row, mutations);
    mutateRowsTs(name, Collections.singletonList(batch), timestamp, attributes);
  }

  @Override
  public void mutateRows(ByteBuffer name, List<BatchMutation> batches, Map<ByteBuffer, ByteBuffer> attributes)
      throws IOError, IllegalArgument {
    mutateRowsTs(name, batches, HConstants.LATEST_TIMESTAMP, attributes);
  }

  @Override
  public void mutateRowsTs(ByteBuffer name, List<BatchMutation> batches, long timestamp,
      Map<ByteBuffer, ByteBuffer> attributes) throws IOError, IllegalArgument {
    ioOrArg(() -> {
      List<RowChange> changes = new ArrayList<>(batches.size());
      for (BatchMutation batch : batches) {
        changes.add(new RowChange(bytes(batch.bufferForRow()), batch.getMutations(), timestamp, attributes));
      }
      applyChanges(name, changes);
      return null;
    });
  }

  /** Each row at its own timestamp; otherwise exactly mutateRowsTs. */
  @Override
  public void mutateRowsTsEach(ByteBuffer name, List<BatchMutationTs> rowBatches) throws IOError, IllegalArgument {
    ioOrArg(() -> {
      List<RowChange> changes = new ArrayList<>(rowBatches.size());
      for (BatchMutationTs batch : rowBatches) {
        changes.add(new RowChange(bytes(batch.bufferForRow()), batch.getMutations(), batch.getTimestamp(), null));
      }
      applyChanges(name, changes);
      return null;
    });
  }

  /**
   * Puts are sent before deletes, as HBase's own Thrift1 handler does for a batch. No rows is
   * a no-op that does not look at the table name: clients call mutateRowsTsEach with no rows
   * to check that this gateway has it.
   */
  private void applyChanges(ByteBuffer name, List<RowChange> changes) throws IOException {
    if (changes.isEmpty()) {
      return;
    }
    List<Put> puts = new ArrayList<>();
    List<Delete> deletes = new ArrayList<>();
    for (RowChange change : changes) {
      if (change.put != null) {
        puts.add(change.put);
      }
      if (!change.delete.isEmpty()) {
        deletes.add(change.delete);
      }
    }
    try (Table table = connection.getTable(tableName(name))) {
      if (!puts.isEmpty()) {
        table.put(puts);
      }
      if (!deletes.isEmpty()) {
        table.delete(deletes);
      }
    }
  }

  @Override
  public long atomicIncrement(ByteBuffer name, ByteBuffer row, ByteBuffer col, long value)
      throws IOError, IllegalArgument {
    return ioOrArg(() -> {
      byte[][] famAndQf = column(col);
      try (Table table = connection.getTable(tableName(name))) {
        return table.incrementColumnValue(bytes(row), famAndQf[0], qualifierOf(famAndQf), value);
      }
    });
  }

  private void deleteWith(ByteBuffer name, Delete delete) throws IOError {
    io(() -> {
      try (Table table = connection.getTable(tableName(name))) {
        table.delete(delete);
      }
      return null;
    });
  }

  @Override
  public void deleteAll(ByteBuffer name, ByteBuffer row, ByteBuffer col, Map<ByteBuffer, ByteBuffer> attributes)
      throws IOError {
    deleteAllTs(name, row, col, HConstants.LATEST_TIMESTAMP, attributes);
  }

  @Override
  public void deleteAllTs(ByteBuffer name, ByteBuffer row, ByteBuffer col, long timestamp,
      Map<ByteBuffer, ByteBuffer> attributes) throws IOError {
    Delete delete;
    try {
      delete = new Delete(bytes(row));
      addAttributes(delete, attributes);
      byte[][] famAndQf = column(col);
      if (famAndQf.length == 1) {
        delete.addFamily(famAndQf[0], timestamp);
      } else {
        delete.addColumns(famAndQf[0], famAndQf[1], timestamp);
      }
    } catch (RuntimeException e) {
      throw ioError(e);
    }
    deleteWith(name, delete);
  }

  @Override
  public void deleteAllRow(ByteBuffer name, ByteBuffer row, Map<ByteBuffer, ByteBuffer> attributes) throws IOError {
    deleteAllRowTs(name, row, HConstants.LATEST_TIMESTAMP, attributes);
  }

  @Override
  public void deleteAllRowTs(ByteBuffer name, ByteBuffer row, long timestamp, Map<ByteBuffer, ByteBuffer> attributes)
      throws IOError {
    Delete delete;
    try {
      delete = new Delete(bytes(row), timestamp);
      addAttributes(delete, attributes);
    } catch (RuntimeException e) {
      throw ioError(e);
    }
    deleteWith(name, delete);
  }

  @Override
  public void increment(TIncrement increment) throws IOError {
    incrementRows(Collections.singletonList(increment));
  }

  @Override
  public void incrementRows(List<TIncrement> increments) throws IOError {
    io(() -> {
      for (TIncrement inc : increments) {
        byte[][] famAndQf = column(inc.bufferForColumn());
        Increment op = new Increment(bytes(inc.bufferForRow()));
        op.addColumn(famAndQf[0], qualifierOf(famAndQf), inc.getAmmount());
        try (Table table = connection.getTable(tableName(inc.bufferForTable()))) {
          table.increment(op);
        }
      }
      return null;
    });
  }

  @Override
  public List<TCell> append(TAppend append) throws IOError {
    return io(() -> {
      List<ByteBuffer> columns = append.getColumns();
      List<ByteBuffer> values = append.getValues();
      if (columns == null || values == null || columns.size() != values.size()) {
        throw new IllegalArgumentException("append needs as many values as columns");
      }
      Append op = new Append(bytes(append.bufferForRow()));
      for (int i = 0; i < columns.size(); i++) {
        byte[][] famAndQf = column(columns.get(i));
        op.addColumn(famAndQf[0], qualifierOf(famAndQf), bytes(values.get(i)));
      }
      try (Table table = connection.getTable(tableName(append.bufferForTable()))) {
        Result result = table.append(op);
        return cells(result == null ? null : result.rawCells());
      }
    });
  }

  @Override
  public boolean checkAndPut(ByteBuffer name, ByteBuffer row, ByteBuffer col, ByteBuffer value, Mutation mput,
      Map<ByteBuffer, ByteBuffer> attributes) throws IOError, IllegalArgument {
    return ioOrArg(() -> {
      byte[] rowKey = bytes(row);
      byte[][] putColumn = column(mput.bufferForColumn());
      Put put = new Put(rowKey);
      addAttributes(put, attributes);
      put.addColumn(putColumn[0], qualifierOf(putColumn),
          mput.isSetValue() ? bytes(mput.bufferForValue()) : HConstants.EMPTY_BYTE_ARRAY);
      put.setDurability(durability(mput));
      byte[][] checkColumn = column(col);
      CheckAndMutate.Builder check = CheckAndMutate.newBuilder(rowKey);
      if (value == null) {
        check.ifNotExists(checkColumn[0], qualifierOf(checkColumn));
      } else {
        check.ifEquals(checkColumn[0], qualifierOf(checkColumn), bytes(value));
      }
      try (Table table = connection.getTable(tableName(name))) {
        return table.checkAndMutate(check.build(put)).isSuccess();
      }
    });
  }

  @Override
  public List<TCell> getRowOrBefore(ByteBuffer name, ByteBuffer row, ByteBuffer family) throws IOError {
    throw new IOError("getRowOrBefore is not supported: HBase 2 removed it; use a reversed scan");
  }

  @Override
  public TRegionInfo getRegionInfo(ByteBuffer row) throws IOError {
    throw new IOError("getRegionInfo is not supported by this gateway; use getTableRegions");
  }

  // ---- scanners ----

  private int openScanner(ByteBuffer name, Scan scan, boolean sortColumns) throws IOError {
    return io(() -> {
      Table table = connection.getTable(tableName(name));
      try {
        ResultScanner scanner = table.getScanner(scan);
        int id = nextScannerId.incrementAndGet();
        scanners.put(id, new OpenScanner(table, scanner, sortColumns));
        return id;
      } catch (IOException | RuntimeException e) {
        table.close();
        throw e;
      }
    });
  }

  private static Scan scanFrom(ByteBuffer startRow, ByteBuffer stopRow, List<ByteBuffer> columns, long timestamp,
      Map<ByteBuffer, ByteBuffer> attributes) throws IOException {
    Scan scan = new Scan();
    addAttributes(scan, attributes);
    if (startRow != null) {
      scan.withStartRow(bytes(startRow));
    }
    if (stopRow != null) {
      scan.withStopRow(bytes(stopRow));
    }
    if (timestamp != HConstants.LATEST_TIMESTAMP) {
      scan.setTimeRange(0, timestamp);
    }
    addColumns(scan, columns);
    return scan;
  }

  @Override
  public int scannerOpenWithScan(ByteBuffer name, TScan tScan, Map<ByteBuffer, ByteBuffer> attributes) throws IOError {
    Scan scan;
    try {
      scan = scanFrom(tScan.isSetStartRow() ? tScan.bufferForStartRow() : null,
          tScan.isSetStopRow() ? tScan.bufferForStopRow() : null, tScan.getColumns(),
          tScan.isSetTimestamp() ? tScan.getTimestamp() : HConstants.LATEST_TIMESTAMP, attributes);
      if (tScan.isSetCaching()) {
        scan.setCaching(tScan.getCaching());
      }
      if (tScan.isSetBatchSize()) {
        scan.setBatch(tScan.getBatchSize());
      }
      if (tScan.isSetFilterString()) {
        scan.setFilter(new ParseFilter().parseFilterString(bytes(tScan.bufferForFilterString())));
      }
      if (tScan.isSetReversed()) {
        scan.setReversed(tScan.isReversed());
      }
    } catch (IOException | RuntimeException e) {
      throw ioError(e);
    }
    return openScanner(name, scan, tScan.isSetSortColumns() && tScan.isSortColumns());
  }

  @Override
  public int scannerOpen(ByteBuffer name, ByteBuffer startRow, List<ByteBuffer> columns,
      Map<ByteBuffer, ByteBuffer> attributes) throws IOError {
    return scannerOpenWithStopTs(name, startRow, null, columns, HConstants.LATEST_TIMESTAMP, attributes);
  }

  @Override
  public int scannerOpenWithStop(ByteBuffer name, ByteBuffer startRow, ByteBuffer stopRow, List<ByteBuffer> columns,
      Map<ByteBuffer, ByteBuffer> attributes) throws IOError {
    return scannerOpenWithStopTs(name, startRow, stopRow, columns, HConstants.LATEST_TIMESTAMP, attributes);
  }

  @Override
  public int scannerOpenWithPrefix(ByteBuffer name, ByteBuffer startAndPrefix, List<ByteBuffer> columns,
      Map<ByteBuffer, ByteBuffer> attributes) throws IOError {
    Scan scan;
    try {
      scan = scanFrom(startAndPrefix, null, columns, HConstants.LATEST_TIMESTAMP, attributes);
      scan.setFilter(new WhileMatchFilter(new PrefixFilter(bytes(startAndPrefix))));
    } catch (IOException | RuntimeException e) {
      throw ioError(e);
    }
    return openScanner(name, scan, false);
  }

  @Override
  public int scannerOpenTs(ByteBuffer name, ByteBuffer startRow, List<ByteBuffer> columns, long timestamp,
      Map<ByteBuffer, ByteBuffer> attributes) throws IOError {
    return scannerOpenWithStopTs(name, startRow, null, columns, timestamp, attributes);
  }

  @Override
  public int scannerOpenWithStopTs(ByteBuffer name, ByteBuffer startRow, ByteBuffer stopRow,
      List<ByteBuffer> columns, long timestamp, Map<ByteBuffer, ByteBuffer> attributes) throws IOError {
    Scan scan;
    try {
      scan = scanFrom(startRow, stopRow, columns, timestamp, attributes);
    } catch (IOException | RuntimeException e) {
      throw ioError(e);
    }
    return openScanner(name, scan, false);
  }

  @Override
  public List<TRowResult> scannerGet(int id) throws IOError, IllegalArgument {
    return scannerGetList(id, 1);
  }

  @Override
  public List<TRowResult> scannerGetList(int id, int nbRows) throws IOError, IllegalArgument {
    OpenScanner open = scanners.get(id);
    if (open == null) {
      throw new IllegalArgument("scanner id " + id + " is not open (closed, or idle longer than "
          + SCANNER_IDLE_MS / 1000 + " s)");
    }
    open.lastUsed = System.currentTimeMillis();
    try {
      return rows(open.scanner.next(Math.max(1, nbRows)), open.sortColumns);
    } catch (IOException | RuntimeException e) {
      scanners.remove(id);
      open.close();
      throw ioError(e);
    }
  }

  @Override
  public void scannerClose(int id) throws IOError, IllegalArgument {
    OpenScanner open = scanners.remove(id);
    if (open == null) {
      throw new IllegalArgument("scanner id " + id + " is not open");
    }
    open.close();
  }

  private void closeIdleScanners() {
    long cutoff = System.currentTimeMillis() - SCANNER_IDLE_MS;
    for (Map.Entry<Integer, OpenScanner> entry : scanners.entrySet()) {
      if (entry.getValue().lastUsed < cutoff && scanners.remove(entry.getKey(), entry.getValue())) {
        LOG.info("closing scanner {} after {} s idle", entry.getKey(), SCANNER_IDLE_MS / 1000);
        entry.getValue().close();
      }
    }
  }

  // ---- process ----

  /**
   * HBase in standalone mode inside this JVM: its own ZooKeeper, one master, one region server.
   * Stopping it is a cluster shutdown (the master closes and flushes every region before the
   * region server exits), not the per-server shutdown hooks, which race each other when both
   * servers share a JVM and can leave the region server waiting on a ZooKeeper already gone.
   */
  private static final class LocalCluster {
    private final MiniZooKeeperCluster zooKeeper;
    private final LocalHBaseCluster cluster;

    LocalCluster(Configuration conf) throws IOException, InterruptedException {
      int zkPort = conf.getInt(HConstants.ZOOKEEPER_CLIENT_PORT, 0);
      if (zkPort == 0) {
        throw new IOException("no " + HConstants.ZOOKEEPER_CLIENT_PORT + " in the configuration");
      }
      DefaultMetricsSystem.setMiniClusterMode(true);
      zooKeeper = new MiniZooKeeperCluster(conf);
      zooKeeper.setDefaultClientPort(zkPort);
      int started = zooKeeper.startup(new File(conf.get(HConstants.ZOOKEEPER_DATA_DIR)));
      if (started != zkPort) {
        zooKeeper.shutdown();
        throw new IOException("ZooKeeper for HBase wanted port " + zkPort + " but started on " + started
            + " (is the port taken?)");
      }
      conf.setInt(HConstants.ZK_SESSION_TIMEOUT, conf.getInt(HConstants.ZK_SESSION_TIMEOUT + ".localHBaseCluster", 10_000));
      cluster = new LocalHBaseCluster(conf, 1, 1, HMaster.class, HRegionServer.class);
    }

    void start() throws IOException {
      cluster.startup();
    }

    /** Wait until both servers have exited, for whatever reason. */
    void join() {
      cluster.join();
    }

    void shutdown() {
      cluster.shutdown();
      try {
        zooKeeper.shutdown();
      } catch (IOException e) {
        LOG.warn("stopping HBase's ZooKeeper failed", e);
      }
    }
  }

  private static void exitSoon(int status) {
    // System.exit from a thread that a shutdown hook may be joining would deadlock; exit from
    // a fresh daemon thread instead.
    Thread exit = new Thread(() -> System.exit(status), "exit");
    exit.setDaemon(true);
    exit.start();
  }

  /** A Thrift1 server on one port: buffered transport, binary protocol, as happybase expects. */
  private static TServer server(String host, int port, TProcessor processor) throws Exception {
    TServerSocket socket = new TServerSocket(new InetSocketAddress(host, port));
    TThreadPoolServer.Args serverArgs = new TThreadPoolServer.Args(socket)
        .processor(processor)
        .protocolFactory(new TBinaryProtocol.Factory())
        .transportFactory(new TTransportFactory())
        .minWorkerThreads(4)
        .maxWorkerThreads(512);
    return new TThreadPoolServer(serverArgs);
  }

  private static void usage(String why) {
    System.err.println(why);
    System.err.println("usage: Thrift1Gateway [--local-cluster] [--no-extension] [--stock-port STOCK_PORT]"
        + " BIND_HOST PORT");
    System.exit(2);
  }

  private static int port(String text) {
    try {
      int port = Integer.parseInt(text);
      if (port > 0 && port < 65536) {
        return port;
      }
    } catch (NumberFormatException e) {
      // reported below with the value
    }
    usage("not a TCP port: " + text);
    return -1;
  }

  public static void main(String[] args) throws Exception {
    List<String> argv = new ArrayList<>(java.util.Arrays.asList(args));
    boolean withCluster = argv.remove("--local-cluster");
    boolean extension = !argv.remove("--no-extension");
    int stockPort = -1;
    int stockFlag = argv.indexOf("--stock-port");
    if (stockFlag >= 0) {
      if (stockFlag + 1 >= argv.size()) {
        usage("--stock-port needs a port");
      }
      stockPort = port(argv.remove(stockFlag + 1));
      argv.remove(stockFlag);
    }
    if (argv.size() != 2) {
      usage("expected BIND_HOST PORT, got " + argv);
    }
    String host = argv.get(0);
    int mainPort = port(argv.get(1));
    Configuration conf = HBaseConfiguration.create();

    LocalCluster cluster = null;
    AtomicBoolean stopping = new AtomicBoolean();
    if (withCluster) {
      // The servers' own shutdown hooks are replaced by the cluster shutdown below.
      conf.setBoolean("hbase.shutdown.hook", false);
      cluster = new LocalCluster(conf);
      cluster.start();
      LocalCluster watched = cluster;
      Thread watcher = new Thread(() -> {
        watched.join();
        if (!stopping.get()) {
          LOG.error("HBase's master and region server have exited; stopping the gateway");
          exitSoon(1);
        }
      }, "cluster-watcher");
      watcher.setDaemon(true);
      watcher.start();
    }

    Connection connection = ConnectionFactory.createConnection(conf);
    Thrift1Gateway gateway = new Thrift1Gateway(connection);
    ScheduledExecutorService janitor = Executors.newSingleThreadScheduledExecutor(r -> {
      Thread t = new Thread(r, "scanner-janitor");
      t.setDaemon(true);
      return t;
    });
    janitor.scheduleWithFixedDelay(gateway::closeIdleScanners, 60, 60, TimeUnit.SECONDS);

    TProcessor stock = new Hbase.Processor<Hbase.Iface>(gateway);
    TServer server = server(host, mainPort, extension ? new NxnwHbase.Processor<NxnwHbase.Iface>(gateway) : stock);
    TServer stockServer = stockPort > 0 ? server(host, stockPort, stock) : null;
    LocalCluster owned = cluster;
    Runtime.getRuntime().addShutdownHook(new Thread(() -> {
      stopping.set(true);
      LOG.info("stopping: gateway first, then {}", owned == null ? "nothing else" : "the local HBase cluster");
      server.stop();
      if (stockServer != null) {
        stockServer.stop();
      }
      try {
        connection.close();
      } catch (IOException e) {
        LOG.warn("closing the HBase connection failed", e);
      }
      if (owned != null) {
        owned.shutdown();
        LOG.info("local HBase cluster stopped");
      }
    }, "gateway-shutdown"));
    if (stockServer != null) {
      Thread stockThread = new Thread(stockServer::serve, "stock-thrift1-server");
      stockThread.setDaemon(true);
      stockThread.start();
      LOG.info("HBase Thrift1 gateway, stock surface (no mutateRowsTsEach), listening on {}:{}", host, stockPort);
    }
    LOG.info("HBase Thrift1 gateway listening on {}:{} ({})", host, mainPort,
        extension ? "with nxnw's mutateRowsTsEach" : "stock surface, no mutateRowsTsEach");
    server.serve();
  }
}
