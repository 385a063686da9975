package tandem.bench;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.KTable;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * The reconciler a Kafka team would write instead of tandem, kept minimal: the legacy CRM's
 * contacts and the new CRM's copies as two KTables keyed by join key, an outer join that
 * compares the mapped fields, and the count of records per status, written to a topic.
 * Exactly-once (v2), RocksDB state stores with their changelogs.
 *
 * <p>Arguments: bootstrap servers, application id, source topic, target topic, counts topic,
 * state directory, stream threads.
 */
public final class StreamsReconciler {
    private static final ObjectMapper JSON = new ObjectMapper();
    private static final Serde<String> TEXT = Serdes.String();
    /** Separates the mapped values of one record; no generated value holds it. */
    private static final char SEPARATOR = '\u001f';

    private StreamsReconciler() {}

    /** The mapped values of an event's fields, in mapping order. */
    static String mapped(JsonNode fields, String... names) {
        StringBuilder values = new StringBuilder();
        for (String name : names) {
            values.append(fields.path(name).asText("")).append(SEPARATOR);
        }
        return values.toString();
    }

    static JsonNode fields(String event) {
        try {
            return JSON.readTree(event).path("fields");
        } catch (IOException malformed) {
            return JSON.missingNode();
        }
    }

    static String status(String legacy, String copy) {
        if (legacy == null) {
            return "missing_in_source";
        }
        if (copy == null) {
            return "missing_in_target";
        }
        return legacy.equals(copy) ? "in_sync" : "mismatch";
    }

    public static void main(String[] args) throws InterruptedException {
        if (args.length != 7) {
            System.err.println(
                    "usage: StreamsReconciler <bootstrap> <application id> <source topic> <target topic> <counts topic> <state dir> <threads>");
            System.exit(2);
        }
        StreamsBuilder builder = new StreamsBuilder();
        // The legacy CRM's messages are keyed by its id, which is the join key.
        KTable<String, String> legacy = builder
                .table(args[2], Consumed.with(TEXT, TEXT))
                .mapValues(event -> mapped(fields(event), "Email", "FirstName", "LastName"));
        // The new CRM's are keyed by its own id: re-keyed by the legacy id they carry.
        KTable<String, String> copies = builder
                .stream(args[3], Consumed.with(TEXT, TEXT))
                .map((id, event) -> {
                    JsonNode fields = fields(event);
                    return KeyValue.pair(
                            fields.path("legacy_id").asText(""),
                            mapped(fields, "email", "firstname", "lastname"));
                })
                .toTable(Materialized.<String, String, KeyValueStore<Bytes, byte[]>>as("copies")
                        .withKeySerde(TEXT)
                        .withValueSerde(TEXT));
        legacy.outerJoin(copies, StreamsReconciler::status)
                .groupBy((joinKey, status) -> KeyValue.pair(status, status), Grouped.with(TEXT, TEXT))
                .count(Materialized.as("counts"))
                .toStream()
                .to(args[4], Produced.with(TEXT, Serdes.Long()));

        Properties properties = new Properties();
        properties.put(StreamsConfig.APPLICATION_ID_CONFIG, args[1]);
        properties.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        properties.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        properties.put(StreamsConfig.STATE_DIR_CONFIG, args[5]);
        properties.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, Integer.parseInt(args[6]));
        properties.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
        // With record caches, the join computes a result's old value from the other side's
        // newest value while the result last sent used an older one: the counts downstream
        // drift (some below zero). Without caches every update is sent, and the counts hold.
        properties.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, 0L);

        KafkaStreams streams = new KafkaStreams(builder.build(), properties);
        CountDownLatch stopped = new CountDownLatch(1);
        int[] exitCode = {0};
        streams.setUncaughtExceptionHandler(error -> {
            System.err.println("the reconciler failed: " + error);
            exitCode[0] = 1;
            return StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        streams.setStateListener((now, before) -> {
            if (now == KafkaStreams.State.NOT_RUNNING || now == KafkaStreams.State.ERROR) {
                stopped.countDown();
            }
        });
        Runtime.getRuntime().addShutdownHook(new Thread(streams::close));
        streams.start();
        stopped.await();
        streams.close();
        System.exit(exitCode[0]);
    }
}
