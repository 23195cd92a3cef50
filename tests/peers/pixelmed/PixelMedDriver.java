// Drives PixelMed's own SCU and SCP classes for tests/peers/pixelmed.py, several operations per
// JVM (Java start-up costs a second or two). Each operation prints one line "RESULT <op> OK|FAIL
// <detail>" so that the Python side reads PixelMed's verdict, never a guess.
//
//   ops: a file, one operation a line, fields separated by tabs:
//     echo   host port calling called       (echo-tls: the same over PixelMed's TLS)
//     store  host port calling called file...
//     find   host port calling called level key=value...      (PS3.4 C.4.1, Study Root)
//     move   host port calling called dest level key=value... (PS3.4 C.4.2)
//     get    host port calling called outdir level key=value... (PS3.4 C.4.3)
//   scp host port aet dir: PixelMed's StorageSOPClassSCP on a socket bound to host only (the
//     dispatcher binds every interface), until stdin closes; prints "LISTENING" and
//     "RECEIVED <file> <transfer syntax> <calling AE>" per object.
import com.pixelmed.dicom.*;
import com.pixelmed.network.*;
import java.io.*;
import java.net.*;
import java.nio.file.*;
import java.util.*;

public class PixelMedDriver {
    static final String STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1";
    static final String STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2";
    static final String STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3";

    public static void main(String[] args) throws Exception {
        if (args.length >= 1 && args[0].equals("scp")) {
            scp(args[1], Integer.parseInt(args[2]), args[3], new File(args[4]));
            return;
        }
        for (String line : Files.readAllLines(Paths.get(args[0]))) {
            if (line.isBlank()) continue;
            String[] f = line.split("\t");
            try {
                System.out.println("RESULT " + f[0] + " OK " + run(f));
            } catch (Throwable t) {
                System.out.println("RESULT " + f[0] + " FAIL " + t.getClass().getName() + ": "
                    + String.valueOf(t.getMessage()).replace('\n', ' '));
            }
            System.out.flush();
        }
    }

    static AttributeList identifier(String level, String[] f, int from) throws DicomException {
        AttributeList list = new AttributeList();
        add(list, TagFromName.QueryRetrieveLevel, level);
        for (int i = from; i < f.length; i++) {
            String[] kv = f[i].split("=", 2);
            add(list, DicomDictionary.StandardDictionary.getTagFromName(kv[0]), kv.length > 1 ? kv[1] : "");
        }
        return list;
    }

    static void add(AttributeList list, AttributeTag tag, String value) throws DicomException {
        Attribute a = AttributeFactory.newAttribute(tag);
        if (!value.isEmpty()) a.addValue(value);
        list.put(tag, a);
    }

    static String run(String[] f) throws Exception {
        String host = f[1];
        int port = Integer.parseInt(f[2]);
        String calling = f[3], called = f[4];
        switch (f[0]) {
            case "echo":
                new VerificationSOPClassSCU(host, port, called, calling, false);
                return "";
            case "echo-tls":  // PixelMed's "SECURE" transport: JSSE's default SSLSocketFactory
                new VerificationSOPClassSCU(host, port, called, calling, true);
                return "";
            case "store": {
                SetOfDicomFiles files = new SetOfDicomFiles();
                for (int i = 5; i < f.length; i++) files.add(f[i]);
                final int[] last = new int[4];
                StorageSOPClassSCU scu = new StorageSOPClassSCU(host, port, called, calling, files, 0,
                    new MultipleInstanceTransferStatusHandler() {
                        public void updateStatus(int remaining, int completed, int failed, int warning, String uid) {
                            last[0] = remaining; last[1] = completed; last[2] = failed; last[3] = warning;
                        }
                    });
                return "remaining=" + last[0] + " completed=" + last[1] + " failed=" + last[2] + " warning=" + last[3]
                    + " trapped=" + scu.encounteredTrappedExceptions();
            }
            case "find": {
                final List<String> answers = new ArrayList<>();
                new FindSOPClassSCU(host, port, called, calling, STUDY_ROOT_FIND, identifier(f[5], f, 6),
                    new IdentifierHandler() {
                        public void doSomethingWithIdentifier(AttributeList id) {
                            answers.add(Attribute.getSingleStringValueOrEmptyString(id, TagFromName.StudyInstanceUID)
                                + "|" + Attribute.getSingleStringValueOrEmptyString(id, TagFromName.PatientID)
                                + "|" + Attribute.getSingleStringValueOrEmptyString(id, TagFromName.RetrieveAETitle));
                        }
                    });
                return "answers=" + String.join(",", answers);
            }
            case "move":
                new MoveSOPClassSCU(host, port, called, calling, f[5], STUDY_ROOT_MOVE, identifier(f[6], f, 7));
                return "";
            case "get": {
                final List<String> got = new ArrayList<>();
                // A few storage classes: with all of them PixelMed proposes more than the 128
                // presentation contexts an association may carry (PS3.8 9.3.2.2) and refuses itself.
                Set<String> classes = new HashSet<>(Arrays.asList(SOPClass.CTImageStorage, SOPClass.MRImageStorage,
                    SOPClass.SecondaryCaptureImageStorage, SOPClass.RTPlanStorage));
                new GetSOPClassSCU(host, port, called, calling, STUDY_ROOT_GET, identifier(f[6], f, 7),
                    new IdentifierHandler(), new File(f[5]), StoredFilePathStrategy.BYSOPINSTANCEUIDINSINGLEFOLDER,
                    new ReceivedObjectHandler() {
                        public void sendReceivedObjectIndication(String file, String ts, String aet) {
                            got.add(file);
                        }
                    }, classes, true, false, true);
                return "received=" + String.join(",", got);
            }
            default:
                throw new IllegalArgumentException("unknown operation " + f[0]);
        }
    }

    static void scp(String host, int port, String aet, File dir) throws Exception {
        ServerSocket server = new ServerSocket();
        server.setReuseAddress(true);
        server.bind(new InetSocketAddress(InetAddress.getByName(host), port));
        Thread stopper = new Thread(() -> {
            try { while (System.in.read() >= 0) { } } catch (IOException e) { }
            System.exit(0);
        });
        stopper.setDaemon(true);
        stopper.start();
        System.out.println("LISTENING " + host + " " + port);
        System.out.flush();
        ReceivedObjectHandler handler = new ReceivedObjectHandler() {
            public void sendReceivedObjectIndication(String file, String ts, String calling) {
                synchronized (System.out) {
                    System.out.println("RECEIVED " + file + " " + ts + " " + calling);
                    System.out.flush();
                }
            }
        };
        while (true) {
            Socket socket = server.accept();
            try {
                new Thread(new StorageSOPClassSCP(socket, aet, AssociationFactory.getDefaultMaximumLengthReceived(),
                    AssociationFactory.getDefaultReceiveBufferSize(), AssociationFactory.getDefaultSendBufferSize(), dir,
                    StoredFilePathStrategy.BYSOPINSTANCEUIDINSINGLEFOLDER, handler, null, null, null, null,
                    new AnyExplicitStoreFindMoveGetPresentationContextSelectionPolicy())).start();
            } catch (Exception e) {
                System.out.println("SCPERROR " + e);
                socket.close();
            }
        }
    }
}
