// A Java application's audit logger, as PACS and RIS vendors write one: each audit message (a
// PS3.15 A.5 XML file named on the command line, read as UTF-8) is logged at INFO through log4j2,
// whose configuration file (first argument) names the appender: Syslog or Socket with the
// Rfc5424Layout, over TCP, UDP or SSL. Built and run by tests/peers/syslog_senders.py.
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;

import org.apache.logging.log4j.LogManager;
import org.apache.logging.log4j.Logger;
import org.apache.logging.log4j.core.LoggerContext;
import org.apache.logging.log4j.core.config.Configurator;

public final class AuditSender {
    private AuditSender() {
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: AuditSender LOG4J2_XML MESSAGE_FILE...");
            System.exit(2);
        }
        LoggerContext context = Configurator.initialize("audit-sender", args[0]);
        if (context == null) {
            System.err.println("log4j2 did not read " + args[0]);
            System.exit(2);
        }
        Logger audit = LogManager.getLogger("audit");
        for (int i = 1; i < args.length; i++) {
            audit.info(new String(Files.readAllBytes(Path.of(args[i])), StandardCharsets.UTF_8));
        }
        // Stopping the context flushes and closes the appender's connection (log4j2 writes
        // through a buffered stream).
        Configurator.shutdown(context);
        System.out.println("sent " + (args.length - 1));
    }
}
