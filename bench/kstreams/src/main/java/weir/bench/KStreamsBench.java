package weir.bench;

import java.util.Properties;
import java.util.concurrent.CountDownLatch;

import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import java.time.Duration;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.Suppressed;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;

/**
 * The Kafka Streams side of weir's benchmark: {@code mirror} (copy every record) or
 * {@code totals} (per key, a running count/sum/min/max in a RocksDB store with a changelog,
 * one JSON output per input record, like weir's `totals` example), or {@code windows} (count
 * and sum per key per tumbling window with grace, emitted once when the window closes:
 * {@code windowedBy(TimeWindows.ofSizeAndGrace(..)).aggregate(..)} with
 * {@code suppress(untilWindowCloses)}, the same JSON as weir's `windows` example),
 * exactly_once_v2.
 *
 * <p>Usage: {@code KStreamsBench mirror|totals|windows BOOTSTRAP APPLICATION_ID INPUT OUTPUT
 * COMMIT_INTERVAL_MS THREADS STATE_DIR [WINDOW_MS GRACE_MS]}. Runs until SIGTERM, then closes
 * cleanly.
 */
public final class KStreamsBench {
  private static final String STORE = "totals";

  public static void main(String[] args) throws InterruptedException {
    if (args.length != 8 && args.length != 10) {
      System.err.println(
          "usage: KStreamsBench mirror|totals|windows BOOTSTRAP APPLICATION_ID INPUT OUTPUT COMMIT_INTERVAL_MS THREADS STATE_DIR [WINDOW_MS GRACE_MS]");
      System.exit(2);
    }
    String mode = args[0];
    Properties props = new Properties();
    props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, args[1]);
    props.put(StreamsConfig.APPLICATION_ID_CONFIG, args[2]);
    props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
    props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, Long.parseLong(args[5]));
    props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, Integer.parseInt(args[6]));
    props.put(StreamsConfig.STATE_DIR_CONFIG, args[7]);
    // The record cache in front of RocksDB (Kafka Streams' default size, stated explicitly).
    props.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, 10L * 1024 * 1024);
    props.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");

    StreamsBuilder builder = new StreamsBuilder();
    String input = args[3];
    String output = args[4];
    if (mode.equals("mirror")) {
      builder.stream(input, Consumed.with(Serdes.ByteArray(), Serdes.ByteArray()))
          .to(output, Produced.with(Serdes.ByteArray(), Serdes.ByteArray()));
    } else if (mode.equals("totals")) {
      builder.addStateStore(
          Stores.keyValueStoreBuilder(
                  Stores.persistentKeyValueStore(STORE), Serdes.String(), Serdes.String())
              .withCachingEnabled());
      builder.stream(input, Consumed.with(Serdes.String(), Serdes.String()))
          .process(Totals::new, STORE)
          .to(output, Produced.with(Serdes.String(), Serdes.String()));
    } else if (mode.equals("windows") && args.length == 10) {
      long size = Long.parseLong(args[8]);
      long grace = Long.parseLong(args[9]);
      builder.stream(input, Consumed.with(Serdes.String(), Serdes.String()))
          .groupByKey(Grouped.with(Serdes.String(), Serdes.String()))
          .windowedBy(TimeWindows.ofSizeAndGrace(Duration.ofMillis(size), Duration.ofMillis(grace)))
          // The aggregate is "count,sum".
          .aggregate(
              () -> "0,0",
              (key, value, agg) -> {
                String[] f = agg.split(",");
                long count = Long.parseLong(f[0]) + 1;
                long sum = Long.parseLong(f[1]) + Long.parseLong(value.trim());
                return count + "," + sum;
              },
              Materialized.with(Serdes.String(), Serdes.String()))
          .suppress(Suppressed.untilWindowCloses(Suppressed.BufferConfig.unbounded()))
          .toStream()
          .map(
              (w, agg) -> {
                String[] f = agg.split(",");
                String json =
                    "{\"key\":\"" + w.key() + "\",\"start\":" + w.window().start()
                        + ",\"end\":" + w.window().end() + ",\"count\":" + f[0]
                        + ",\"sum\":" + f[1] + "}";
                return KeyValue.pair(w.key(), json);
              })
          .to(output, Produced.with(Serdes.String(), Serdes.String()));
    } else {
      System.err.println("unknown mode " + mode + ": mirror, totals, or windows WINDOW_MS GRACE_MS");
      System.exit(2);
    }

    KafkaStreams streams = new KafkaStreams(builder.build(), props);
    CountDownLatch done = new CountDownLatch(1);
    Runtime.getRuntime()
        .addShutdownHook(
            new Thread(
                () -> {
                  streams.close();
                  done.countDown();
                }));
    streams.setUncaughtExceptionHandler(
        e -> {
          e.printStackTrace();
          return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler
              .StreamThreadExceptionResponse.SHUTDOWN_APPLICATION;
        });
    streams.start();
    done.await();
  }

  /** The running aggregate of a key, stored as "count,sum,min,max". */
  static final class Totals implements Processor<String, String, String, String> {
    private ProcessorContext<String, String> context;
    private KeyValueStore<String, String> store;

    @Override
    public void init(ProcessorContext<String, String> context) {
      this.context = context;
      this.store = context.getStateStore(STORE);
    }

    @Override
    public void process(Record<String, String> record) {
      long v = Long.parseLong(record.value().trim());
      String old = store.get(record.key());
      long count = 1;
      long sum = v;
      long min = v;
      long max = v;
      if (old != null) {
        String[] f = old.split(",");
        count = Long.parseLong(f[0]) + 1;
        sum = Long.parseLong(f[1]) + v;
        min = Math.min(Long.parseLong(f[2]), v);
        max = Math.max(Long.parseLong(f[3]), v);
      }
      store.put(record.key(), count + "," + sum + "," + min + "," + max);
      String json =
          "{\"key\":\"" + record.key() + "\",\"count\":" + count + ",\"sum\":" + sum
              + ",\"min\":" + min + ",\"max\":" + max + "}";
      context.forward(record.withValue(json));
    }
  }
}
