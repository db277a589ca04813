#!/usr/bin/perl
# knetlab's thin CNI plugin: bin/calico, bin/ovs and bin/weave-net are links to this file;
# the name it is run by is the CNI type. It hands the invocation to the node's agent for
# that type (knetlab/cni/agent.py), which runs the plugin's Python code in a warm process.
# Perl without modules starts in ~2 ms of CPU, Python in ~9-10: that was most of a pod's
# CNI cost. Where no agent listens in this network namespace, the whole plugin runs here
# in Python instead (python3 -S, stdlib only), stdin still unread.
my %module = ("calico" => "knetlab.cni.plugins.calico", "ovs" => "knetlab.cni.plugins.ovs",
              "weave-net" => "knetlab.cni.plugins.bridge");  # as agent.py's PLUGINS
(my $type = $0) =~ s{.*/}{};
my $agent;
socket($agent, 1, 1, 0)                                           # AF_UNIX, SOCK_STREAM
  && connect($agent, pack("S", 1) . "\0knetlab-$type-cni")        # abstract: per netns
  or do {
    require Cwd;
    (my $root = Cwd::abs_path($0)) =~ s{/knetlab/cni/(bin/)?[^/]+$}{};
    my $plugin = $module{$type} // "knetlab.cni.plugins.$type";
    exec "/usr/bin/python3", "-S", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
      . "from $plugin import main; main()", $root;
    print qq({"cniVersion": "1.1.0", "code": 999, "msg": "$type: cannot run python3: $!"});
    exit 1;
  };
my $conf = do { local $/; <STDIN> } // "";
my $env = join "", map { "$_=$ENV{$_}\0" } grep { /^CNI_/ } sort keys %ENV;
my $request = length($env) . "\n" . $env . $conf;
while (length $request) {
  my $sent = syswrite($agent, $request);
  last unless defined $sent;
  substr($request, 0, $sent) = "";
}
shutdown($agent, 1);
my $answer = "";
while (sysread($agent, my $chunk, 65536)) { $answer .= $chunk }
if ($answer !~ /^[0-9]/) {  # the agent went away mid-invocation: say so, as the spec's error
  my ($version) = $conf =~ /"cniVersion"\s*:\s*"([0-9.]+)"/;
  $version //= "1.1.0";
  print qq({"cniVersion": "$version", "code": 11, "msg": "$type: the node's CNI agent )
      . qq(ended without an answer", "details": "try again; see its log ($type-cni.log)"});
  exit 1;
}
print substr($answer, 1);
exit(substr($answer, 0, 1) eq "0" ? 0 : 1);
